"""The scheduler adapter and policy reproduce diffusers' DDIMScheduler.step exactly."""

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from data.errors import UserError
from finetune.rl_math import gaussian_log_prob
from finetune.scheduler import DDIMSchedule

CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("extra", [
    dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),
    dict(prediction_type="epsilon", timestep_spacing="leading"),
])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_schedule_matches_ddim_step(extra, eta):
    ref = DDIMScheduler(**CONFIG, **extra)
    schedule = DDIMSchedule.from_scheduler(ref, num_inference_steps=10, eta=eta)
    ref.set_timesteps(10)
    assert torch.equal(schedule.timesteps, ref.timesteps.long())
    x = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(ref.timesteps):
        out, noise = torch.randn_like(x), torch.randn_like(x)
        expected = ref.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        g = schedule.step(out, x, torch.full((2,), i))
        if not torch.isfinite(expected).all():
            # diffusers' zero-SNR first step takes sqrt(0 +- 1 ulp), NaN on some builds (see
            # data.sampling.finite_ddim); ours clamps that root to 0, the exact value
            assert i == 0 and float(schedule.abar[0]) < 1e-6 and torch.isfinite(g.mean).all()
            expected = g.mean + g.std * noise
        torch.testing.assert_close(g.mean + g.std * noise, expected, atol=1e-5, rtol=1e-4)
        assert torch.isfinite(gaussian_log_prob(expected, g.mean, g.std)).all()
        x = expected


def test_any_sd_scheduler_config_is_read_as_ddim():
    pndm = PNDMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True)
    s = DDIMSchedule.from_scheduler(pndm, 50, 1.0)
    assert s.num_steps == 50 and s.prediction_type == "epsilon" and bool((s.sigma > 0).all())


def test_deterministic_final_step_is_a_clear_error():
    with pytest.raises(UserError, match="set_alpha_to_one=false"):
        DDIMSchedule.from_scheduler(DDIMScheduler(**{**CONFIG, "set_alpha_to_one": True}), 10, 1.0)


def test_x0_clipping_scheduler_is_a_clear_error():
    with pytest.raises(UserError, match="clip_sample=false"):
        DDIMSchedule.from_scheduler(DDIMScheduler(**{**CONFIG, "clip_sample": True}), 10, 1.0)
