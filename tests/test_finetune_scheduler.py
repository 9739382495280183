"""The scheduler adapter and policy reproduce diffusers' DDIMScheduler.step exactly, from any
scheduler config a Stable Diffusion folder ships."""

import json
import logging
import shutil

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler)

from core.errors import UserError
from finetune import scheduler as scheduler_module
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
            # core.sampling.finite_ddim); ours clamps that root to 0, the exact value
            assert i == 0 and float(schedule.abar[0]) < 1e-6 and torch.isfinite(g.mean).all()
            expected = g.mean + g.std * noise
        torch.testing.assert_close(g.mean + g.std * noise, expected, atol=1e-5, rtol=1e-4)
        assert torch.isfinite(gaussian_log_prob(expected, g.mean, g.std)).all()
        x = expected


# The schedulers community Stable Diffusion folders ship; DPMSolverMultistep's default algorithm is DPM-Solver++.
OTHER_KINDS = [PNDMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DDPMScheduler,
               LMSDiscreteScheduler, DPMSolverMultistepScheduler]
SD_BETAS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# Stable Diffusion v1.5's own scheduler/scheduler_config.json, as it ships
SD15_PNDM = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
             "clip_sample": False}


def saved_and_loaded(kind, tmp_path, **keys):
    """A scheduler of ``kind`` as a pipeline folder holds it: its config written by diffusers (every
    key of that class, its defaults for those not given), then loaded back from the file."""
    kind(**SD_BETAS, **keys).save_config(tmp_path / kind.__name__)
    return kind.from_pretrained(tmp_path / kind.__name__)


def sd_ddim(spacing="leading", **keys):
    """The DDIM schedule Stable Diffusion's settings give: what any other kind must be read as."""
    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         timestep_spacing=spacing, **keys)


@pytest.mark.parametrize("kind", OTHER_KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_any_sd_scheduler_config_is_read_as_ddim_with_sd_settings(kind, prediction_type, tmp_path):
    other = saved_and_loaded(kind, tmp_path, prediction_type=prediction_type)
    s = DDIMSchedule.from_scheduler(other, 20, 1.0)
    ref = DDIMSchedule.from_scheduler(sd_ddim(prediction_type=prediction_type), 20, 1.0)
    assert s.prediction_type == prediction_type and bool((s.sigma > 0).all())
    assert s.timesteps.tolist() == list(range(951, 0, -50))  # SD: leading spacing, steps_offset 1
    for a, b in ((s.abar, ref.abar), (s.abar_prev, ref.abar_prev)):
        assert torch.equal(a, b)


def test_stable_diffusion_v15_pndm_config_is_read_as_before(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(SD15_PNDM))
    s = DDIMSchedule.from_scheduler(PNDMScheduler.from_pretrained(tmp_path), 50, 1.0)
    ref = DDIMSchedule.from_scheduler(sd_ddim(), 50, 1.0)
    assert torch.equal(s.timesteps, ref.timesteps) and torch.equal(s.abar_prev, ref.abar_prev)
    assert s.num_steps == 50 and s.prediction_type == "epsilon" and bool((s.sigma > 0).all())


@pytest.mark.parametrize("keys", [dict(rescale_betas_zero_snr=True), dict(timestep_spacing="trailing")])
def test_zero_terminal_snr_or_trailing_configs_keep_trailing_spacing(keys, tmp_path):
    euler = saved_and_loaded(EulerDiscreteScheduler, tmp_path, prediction_type="v_prediction", **keys)
    s = DDIMSchedule.from_scheduler(euler, 20, 1.0)
    zero_snr = keys.get("rescale_betas_zero_snr", False)
    ref = DDIMSchedule.from_scheduler(sd_ddim("trailing", prediction_type="v_prediction",
                                              rescale_betas_zero_snr=zero_snr), 20, 1.0)
    assert s.timesteps[0] == 999 and torch.equal(s.timesteps, ref.timesteps) and torch.equal(s.abar, ref.abar)
    assert bool((s.sigma > 0).all())
    if zero_snr:
        assert float(s.abar[0]) < 1e-6  # t=999 is pure noise: the zero-SNR handling is kept


def test_another_kind_is_said_once_in_the_log(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(scheduler_module, "_said", set())
    euler = saved_and_loaded(EulerDiscreteScheduler, tmp_path)
    with caplog.at_level(logging.WARNING, logger="finetune.scheduler"):
        for _ in range(3):
            DDIMSchedule.from_scheduler(euler, 10, 1.0)
        DDIMSchedule.from_scheduler(sd_ddim(), 10, 1.0)  # DDIM itself: nothing to say
    notes = [r.getMessage() for r in caplog.records if r.name == "finetune.scheduler"]
    assert len(notes) == 1 and "EulerDiscreteScheduler" in notes[0] and "set_alpha_to_one=false" in notes[0]


def test_deterministic_final_step_is_a_clear_error():
    with pytest.raises(UserError, match="set_alpha_to_one=false"):
        DDIMSchedule.from_scheduler(DDIMScheduler(**{**CONFIG, "set_alpha_to_one": True}), 10, 1.0)
    # a DDIM config of its own that ends on t=0 (linspace spacing) is the user's choice: said clearly
    with pytest.raises(UserError, match="timestep_spacing"):
        DDIMSchedule.from_scheduler(DDIMScheduler(**{**CONFIG, "timestep_spacing": "linspace"}), 10, 1.0)


def test_x0_clipping_scheduler_is_a_clear_error():
    with pytest.raises(UserError, match="clip_sample=false"):
        DDIMSchedule.from_scheduler(DDIMScheduler(**{**CONFIG, "clip_sample": True}), 10, 1.0)


@pytest.mark.parametrize("kind", OTHER_KINDS, ids=lambda k: k.__name__)
@pytest.mark.slow
def test_dpok_fine_tunes_a_folder_with_any_scheduler_config(kind, tiny_sd, tmp_path):
    """The whole path: a Stable Diffusion folder whose scheduler config is not DDIM fine-tunes."""
    from finetune.config import FinetuneConfig
    from finetune.dpok import train_dpok
    from core.config import load_config

    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd, sd)
    shutil.rmtree(sd / "scheduler")
    kind(**SD_BETAS, prediction_type="v_prediction").save_pretrained(sd / "scheduler")
    index = json.loads((sd / "model_index.json").read_text())
    (sd / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", kind.__name__]}))
    cfg = load_config(FinetuneConfig, None, [
        f"output_dir={tmp_path}/run", f"model.pipeline={sd}", "reward.kind=oracle", "sampling.num_inference_steps=2",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=2",
        "dpok.window=[0,null]", "dpok.tail_steps=0", "sample_grid_every=0"])
    result = train_dpok(cfg, progress=False)
    assert torch.isfinite(torch.tensor(result.metrics["final"]["approx_kl"]))
    assert (result.output_dir / "pytorch_lora_weights.safetensors").exists()
