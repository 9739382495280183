"""Tier 3: CUDA paths (skipped without a CUDA device)."""

import pytest
import torch

from core.config import load_config
from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from finetune.rl_math import gaussian_log_prob
from finetune.scheduler import DDIMSchedule
from tiny_models import make_tiny_sd


@pytest.mark.gpu
def test_dpok_round_on_cuda_in_bf16_keeps_fp32_log_probs(tmp_path):
    sd = make_tiny_sd(tmp_path / "sd")
    cfg = load_config(FinetuneConfig, None, [
        f"output_dir={tmp_path}/run", f"model.pipeline={sd}", "reward.kind=oracle", "mixed_precision=bf16",
        "sampling.num_inference_steps=4", "dpok.rounds=2", "dpok.prompts_per_round=2", "dpok.samples_per_prompt=2",
        "dpok.steps_per_sample=2", "dpok.window=[0,null]", "dpok.tail_steps=0", "sample_grid_every=1",
        "dpok.checkpoint_every_rounds=1",
        "compute.compile=off"])  # compiling is make bench's subject on CUDA (and a CPU test's)
    result = train_dpok(cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


@pytest.mark.gpu
def test_schedule_step_on_cuda_matches_cpu():
    from diffusers import DDIMScheduler

    s = DDIMSchedule.from_scheduler(DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                                  rescale_betas_zero_snr=True, set_alpha_to_one=False,
                                                  clip_sample=False), 10, 1.0)
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    idx = torch.tensor([0, 5])
    cpu = s.step(out, x, idx)
    gpu = s.to("cuda").step(out.cuda().bfloat16(), x.cuda(), idx.cuda())
    assert gpu.mean.dtype == torch.float32  # math in fp32 even for bf16 model outputs
    torch.testing.assert_close(gpu.mean.cpu(), cpu.mean, atol=3e-2, rtol=3e-2)
    lp = gaussian_log_prob(gpu.mean, gpu.mean, gpu.std)
    assert lp.dtype == torch.float32


class _Stop(Exception):
    pass


@pytest.mark.gpu
@pytest.mark.slow
def test_dpok_on_sd15_shapes_at_512_resumes_and_saves_lora_diffusers_loads(tmp_path):
    """SD v1.5's architecture at 512x512 in bf16 with a CLIP ViT-L/14-shaped reward (random
    weights): sample -> reward -> update -> checkpoint -> interrupted -> resumed exactly -> LoRA
    file that diffusers' own ``load_lora_weights`` applies."""
    from diffusers import StableDiffusionPipeline

    from tools.random_models import build_random_clip_vitl14, build_random_sd15, build_reward_model

    sd = build_random_sd15(tmp_path / "sd15")
    reward = build_reward_model(build_random_clip_vitl14(tmp_path / "clip"), tmp_path / "reward")

    def cfg(out):
        return load_config(FinetuneConfig, None, [
            f"output_dir={out}", f"model.pipeline={sd}", f"reward.path={reward}", "mixed_precision=bf16",
            "sampling.num_inference_steps=10", "dpok.rounds=3", "dpok.prompts_per_round=2", "dpok.samples_per_prompt=2",
            "dpok.steps_per_sample=2", "dpok.window=[0,null]", "dpok.tail_steps=0", "dpok.minibatch_size=4",
            "dpok.checkpoint_every_rounds=1", "sample_grid_every=3",
            "prompts.eval_prompts=[one red circle]", "compute.compile=off", "compute.micro_batch=2"])

    def stop_after_two(row):
        if row.round == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train_dpok(cfg(tmp_path / "run"), progress=False, on_round=stop_after_two)
    resumed = train_dpok(cfg(tmp_path / "run"), progress=False)
    straight = train_dpok(cfg(tmp_path / "straight"), progress=False)
    assert len(resumed.history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in resumed.history)
    # the resumed run continues exactly where it stopped (same prompts, noise and rewards)
    assert [h["reward_mean"] for h in resumed.history] == pytest.approx(
        [h["reward_mean"] for h in straight.history], rel=1e-3, abs=1e-4)

    pipe = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, requires_safety_checker=False,
                                                   dtype=torch.bfloat16).to("cuda")
    kwargs = dict(prompt="one red circle", num_inference_steps=2, output_type="latent")
    base = pipe(**kwargs, generator=torch.Generator("cuda").manual_seed(0)).images
    pipe.load_lora_weights(str(tmp_path / "run"))
    tuned = pipe(**kwargs, generator=torch.Generator("cuda").manual_seed(0)).images
    assert base.shape == (1, 4, 64, 64)
    assert not torch.equal(base, tuned)  # the adapter is applied


@pytest.mark.gpu
def test_shapes_model_samples_finite_images_on_cuda():
    """The demo's labeling round on an H100 was all black: diffusers' DDIM step at eta 1 gave NaN at
    the zero-SNR first step there (core.sampling.finite_ddim)."""
    import numpy as np

    from core.loading import load_sd_pipeline
    from shapes import SHAPES_SD
    from core.sampling import generate_images, sampling_dtype

    pipe = load_sd_pipeline(SHAPES_SD, device="cuda")
    prompts = ["one red circle", "two blue squares on a white background"] * 8
    fp32 = generate_images(pipe, prompts, list(range(16)))
    assert all(np.asarray(im).std() > 0 for im in fp32)
    dtype = sampling_dtype("auto", "cuda")  # make generate / make eval's default on CUDA
    assert dtype is torch.bfloat16
    bf16 = generate_images(pipe, prompts, list(range(16)), dtype=dtype)
    assert all(np.asarray(im).std() > 0 for im in bf16)
    assert max(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(fp32, bf16)) < 8


@pytest.mark.gpu
def test_clip_retrieval_with_the_clip_on_cuda():
    """make base's CLIP card: image embeddings came back on the CPU, text embeddings stayed on
    CUDA, and the product failed (found on an H100)."""
    from core.loading import load_clip
    from shapes import SHAPES_CLIP
    from evaluation.base_model import clip_retrieval
    from shapes.training.base import RetrievalConfig

    result = clip_retrieval(load_clip(SHAPES_CLIP, device="cuda"), RetrievalConfig(per_prompt=1, split="heldout"))
    assert 0.5 < result.accuracy <= 1.0
