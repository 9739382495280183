"""Tier 3: CUDA paths (skipped without a CUDA device)."""

import pytest
import torch

from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from finetune.rl_math import gaussian_log_prob
from finetune.scheduler import DDIMSchedule
from pipelines.config import load_config
from tiny_models import make_tiny_sd


@pytest.mark.gpu
def test_dpok_round_on_cuda_in_bf16_keeps_fp32_log_probs(tmp_path):
    sd = make_tiny_sd(tmp_path / "sd")
    cfg = load_config(FinetuneConfig, None, [
        f"output_dir={tmp_path}/run", f"model.pipeline={sd}", "reward.kind=oracle", "mixed_precision=bf16",
        "sampling.num_steps=4", "dpok.rounds=2", "dpok.prompts_per_round=2", "dpok.samples_per_prompt=2",
        "dpok.steps_per_sample=2", "sample_grid_every=1", "checkpoint_every=1"])
    result = train_dpok(cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


@pytest.mark.gpu
def test_schedule_step_on_cuda_matches_cpu():
    from diffusers import DDIMScheduler

    s = DDIMSchedule.from_scheduler(DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                                  rescale_betas_zero_snr=True, set_alpha_to_one=False), 10, 1.0)
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    idx = torch.tensor([0, 5])
    cpu = s.step(out, x, idx)
    gpu = s.to("cuda").step(out.cuda().bfloat16(), x.cuda(), idx.cuda())
    assert gpu.mean.dtype == torch.float32  # math in fp32 even for bf16 model outputs
    torch.testing.assert_close(gpu.mean.cpu(), cpu.mean, atol=3e-2, rtol=3e-2)
    lp = gaussian_log_prob(gpu.mean, gpu.mean, gpu.std)
    assert lp.dtype == torch.float32
