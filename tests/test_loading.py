import numpy as np
import pytest
import torch

from core.errors import UserError
from core.loading import load_clip, load_sd_pipeline
from tiny_models import make_tiny_clip, make_tiny_sd


def test_tiny_sd_folder_loads_and_samples(tmp_path):
    from diffusers import StableDiffusionPipeline

    make_tiny_sd(tmp_path / "sd")
    pipe = load_sd_pipeline(tmp_path / "sd", device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    out = pipe(["two red circles", "one square"], num_inference_steps=2, guidance_scale=2.0,
               height=32, width=32, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 32, 32, 3) and np.isfinite(out.images).all()


def test_tiny_clip_folder_loads(tmp_path):
    make_tiny_clip(tmp_path / "clip")
    clip = load_clip(tmp_path / "clip", device="cpu")
    batch = clip.tokenizer(["three red circles"], padding="max_length", max_length=12, return_tensors="pt")
    feats = clip.model.get_text_features(**batch)
    feats = getattr(feats, "pooler_output", feats)
    assert feats.shape[-1] == 16


@pytest.mark.parametrize("loader", [load_sd_pipeline, load_clip])
def test_missing_or_wrong_folder_is_a_clear_error(tmp_path, loader):
    with pytest.raises(UserError, match="does not exist"):
        loader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a"):
        loader(tmp_path / "empty")


def test_generate_images_is_seeded_per_image(tmp_path):
    from core.sampling import SamplingConfig, generate_images

    make_tiny_sd(tmp_path / "sd")
    pipe = load_sd_pipeline(tmp_path / "sd", device="cpu")
    cfg = SamplingConfig(num_inference_steps=2, batch_size=2)
    a = generate_images(pipe, ["one circle", "two squares", "one circle"], [1, 2, 3], cfg)
    b = generate_images(pipe, ["one circle"], [3], cfg)  # same seed, different batch
    assert len(a) == 3 and a[0].size == (32, 32)
    assert np.array_equal(np.asarray(a[2]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[2]))


def test_bf16_sampling_is_seeded_per_image_and_close_to_fp32(tiny_sd):
    from core.sampling import SamplingConfig, generate_images

    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    cfg = SamplingConfig(num_inference_steps=4, batch_size=2)
    prompts, seeds = ["one circle", "two squares", "one circle"], [1, 2, 3]
    fp32 = generate_images(pipe, prompts, seeds, cfg)
    bf16 = generate_images(pipe, prompts, seeds, cfg, dtype=torch.bfloat16)
    again = generate_images(pipe, prompts[2:], seeds[2:], cfg, dtype=torch.bfloat16)  # other batch
    assert np.array_equal(np.asarray(bf16[2]), np.asarray(again[0]))
    assert not torch.is_autocast_enabled("cpu")  # the autocast ends with the call
    diffs = [np.abs(np.asarray(a, float) - np.asarray(b, float)) for a, b in zip(fp32, bf16)]
    assert any(d.max() > 0 for d in diffs)  # bf16 did run: not bit-identical to fp32
    assert max(d.mean() for d in diffs) < 8  # pixels in 0..255: the same images up to rounding


def test_sampling_dtype_auto_is_bf16_on_cuda_only_and_fp16_needs_cuda(monkeypatch):
    from core.sampling import sampling_dtype

    assert sampling_dtype("no", "cpu") is None
    assert sampling_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        sampling_dtype("fp16", "cpu")
    assert sampling_dtype("auto", "cpu") is None  # as fine-tuning's auto: fp32 off CUDA
    for bf16, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        assert sampling_dtype("auto", "cuda") is expected


@pytest.mark.parametrize("steps", [20, 25, 30])
def test_stochastic_ddim_on_a_zero_snr_schedule_gives_finite_images(tiny_sd, steps):
    """eta 1 on a zero-terminal-SNR schedule: diffusers' own step takes sqrt(0 +- 1 ulp) at t=999
    (NaN, i.e. black images, at 25 and 30 steps here and at 20 on an H100 machine's build)."""
    from core.sampling import SamplingConfig, generate_images

    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    images = generate_images(pipe, ["one circle", "two squares"], [1, 2],
                             SamplingConfig(num_inference_steps=steps, eta=1.0))
    assert all(np.asarray(im).std() > 0 for im in images)  # NaN pixels cast to an all-0 image
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the caller's pipeline is unchanged


def test_a_copy_of_a_model_elsewhere_names_its_images_the_same_way(tiny_sd, tmp_path):
    """Image ids hash the model's fingerprint, not its path: a fresh clone's demo orders (and so
    labels and trains on) its images exactly as the first clone's did."""
    import shutil

    from data import Store
    from core.loading import model_fingerprint
    from core.config import load_config
    from collect.generate import GenerateConfig, generate

    copy = shutil.copytree(tiny_sd, tmp_path / "elsewhere" / "sd")
    assert model_fingerprint(copy) == model_fingerprint(tiny_sd)
    ids = []
    for k, model in enumerate((tiny_sd, copy)):
        root = tmp_path / f"round{k}"
        generate(load_config(GenerateConfig, None, [f"root={root}", f"pipeline={model}", "per_prompt=2",
                                                    "max_prompts=2", "sampling.num_inference_steps=2"]))
        ids.append(sorted(Store(root).to_pandas("generations")["image_id"]))
    assert ids[0] == ids[1] and len(ids[0]) == 4

    other = shutil.copytree(tiny_sd, tmp_path / "changed" / "sd")
    weights = next(other.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of another checkpoint
    weights.write_bytes(bytes(data))
    assert model_fingerprint(other) != model_fingerprint(tiny_sd)
