"""Tier 1 and 2: tools.probe (which denoising steps decide the reward), pure parts and the whole
path on the tiny SD pipeline on CPU."""

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from tools.probe import ProbeConfig, probe_steps, within_prompt_corr, write_probe


def test_within_prompt_corr_removes_each_prompts_mean():
    groups = np.array([0, 0, 0, 1, 1, 1])
    x = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    offset = np.array([10.0, 10.0, 10.0, -5.0, -5.0, -5.0])
    assert within_prompt_corr(x + offset, x, groups) == pytest.approx(1.0)
    assert within_prompt_corr(x + offset, -x, groups) == pytest.approx(-1.0)
    # only the prompt means differ: nothing is left to correlate
    assert np.isnan(within_prompt_corr(offset, x, groups))
    # the correlation of the centred values, by hand
    a, b = np.array([1.0, 3.0, 2.0, 0.0]), np.array([2.0, 1.0, 5.0, 1.0])
    g = np.array([0, 0, 1, 1])
    ca, cb = np.array([-1.0, 1.0, 1.0, -1.0]), np.array([0.5, -0.5, 2.0, -2.0])
    assert within_prompt_corr(a, b, g) == pytest.approx(np.corrcoef(ca, cb)[0, 1])


def brightness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A smooth stand-in reward: mean pixel value, (B,)."""
    return images.float().mean(dim=(1, 2, 3))


def probe_cfg(sd, out, *extra):
    return load_config(ProbeConfig, None, [
        f"pipeline={sd}", "prompts_file=" + str(out / "prompts.txt"), "samples_per_prompt=4",
        "sampling.num_inference_steps=4", "sampling.guidance_scale=3", "tail_from=2", "tail_steps=[1,2]",
        "batch_size=4", f"output_dir={out}", *extra])


def test_a_nearly_deterministic_chain_is_settled_from_the_start(tiny_sd, tmp_path):
    (tmp_path / "prompts.txt").write_text("one circle\ntwo squares\n")
    cfg = probe_cfg(tiny_sd, tmp_path, "sampling.eta=0.001")
    result = probe_steps(cfg, reward_fn=brightness)
    assert result.samples == 8 and sorted(result.settled) == [0, 1, 2, 3]
    # with almost no noise in the steps, any state fixes the image, hence the reward
    assert min(result.settled.values()) > 0.99
    assert result.stochastic_tail_corr > 0.99
    assert [t.tail_steps for t in result.tails] == [1, 2]
    assert result.tails[-1].corr > 0.99  # the full eta-0 tail is the same chain, up to its tiny noise
    out = write_probe(result, cfg)
    saved = json.loads((out / "probe.json").read_text())
    assert set(saved["settled"]) == {"0", "1", "2", "3"}
    assert "| 3 |" in (out / "probe.md").read_text()


def test_stochastic_steps_leave_the_reward_open(tiny_sd, tmp_path):
    (tmp_path / "prompts.txt").write_text("one circle\ntwo squares\n")
    result = probe_steps(probe_cfg(tiny_sd, tmp_path, "after_steps=[0,3]"), reward_fn=brightness)
    assert sorted(result.settled) == [0, 3]
    assert all(-1 <= v <= 1 for v in result.settled.values())
    assert result.settled[0] < 0.99  # at eta 1 the steps' noise moves the reward


def test_bad_probe_settings_are_clear_errors(tiny_sd, tmp_path, capsys):
    from pipelines.cli import run
    from pipelines.probe_steps import main

    (tmp_path / "prompts.txt").write_text("one circle\n")
    with pytest.raises(UserError, match=r"after_steps \[4\] are not in 0..3"):
        probe_steps(probe_cfg(tiny_sd, tmp_path, "after_steps=[4]"), reward_fn=brightness)
    with pytest.raises(UserError, match=r"tail_steps \[1, 3\] must each be in 1..2"):
        probe_steps(probe_cfg(tiny_sd, tmp_path, "tail_steps=[1,3]"), reward_fn=brightness)
    with pytest.raises(UserError, match="samples_per_prompt=1"):
        probe_steps(probe_cfg(tiny_sd, tmp_path, "samples_per_prompt=1"), reward_fn=brightness)
    assert run(main, [f"pipeline={tiny_sd}", f"reward.path={tmp_path}/none", "tail_from=99"]) == 2
    assert "tail_from=99 is not in 0..19" in capsys.readouterr().err
    assert not (tmp_path / "probe.json").exists()


def test_noise_level_is_checked_for_a_flow_chain_only(tiny_sd, tmp_path):
    """noise_level is the flow SDE's: 0 (the ODE, nothing left to probe) is refused for a flow
    folder and passed over for an SD folder, whose chain is DDIM at sampling.eta."""
    from core.families import SD, SD3
    from tools.probe import _check

    cfg = probe_cfg(tiny_sd, tmp_path, "noise_level=0")
    assert _check(cfg, SD) == list(range(cfg.sampling.num_inference_steps))
    with pytest.raises(UserError, match="at 0 the flow SDE is the ODE"):
        _check(cfg, SD3)


def test_probe_takes_a_finetune_configs_setting_for_keys_not_given(tiny_sd, tmp_path, capsys):
    """#56.5: finetune_config=<file> probes at that config's steps (here 3), so after_steps 5 is
    out of range; a sampling key given on the command line wins over the file."""
    from pipelines.cli import run
    from pipelines.probe_steps import main

    cfg = tmp_path / "mine.yaml"
    cfg.write_text("sampling:\n  num_inference_steps: 3\n  guidance_scale: 7.5\n")
    args = [f"pipeline={tiny_sd}", "reward.kind=oracle", f"finetune_config={cfg}", "after_steps=[5]",
            f"output_dir={tmp_path}/probe"]
    assert run(main, args) == 2
    assert "sampling.num_inference_steps=3" in capsys.readouterr().err
    assert run(main, args + ["sampling.num_inference_steps=4", "tail_from=null"]) == 2  # 5 is out of 0..3 too
    err = capsys.readouterr().err
    assert "probing at 4 DDIM steps, guidance 7.5" in err and "sampling.num_inference_steps=4" in err


def test_a_finetune_configs_noise_level_is_the_probes(tmp_path):
    """finetune_config= gives a flow chain its dpok.noise_level (tools.probe.config_noise_level):
    from a config file or a run folder's config.yaml; None where it sets none."""
    from tools.probe import config_noise_level

    (tmp_path / "flow.yaml").write_text("dpok:\n  noise_level: 0.5\nsampling:\n  num_inference_steps: 10\n")
    (tmp_path / "sd.yaml").write_text("sampling:\n  eta: 1.0\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("dpok:\n  noise_level: 0.9\n")
    assert config_noise_level(tmp_path / "flow.yaml") == 0.5
    assert config_noise_level(tmp_path / "sd.yaml") is None
    assert config_noise_level(tmp_path / "run") == 0.9


def test_given_keys_of_a_section_or_the_top_level(tmp_path):
    """evaluation.settings.given_keys: a section's keys (sampling.<key>=, or under the section in
    a config file), or with section=None the top-level ones (<key>=, or at a config file's top)."""
    from evaluation.settings import given_keys

    (tmp_path / "mine.yaml").write_text("noise_level: 0.3\nsampling:\n  eta: 0.5\n")
    args = ["sampling.num_inference_steps=4", "seed=1", "reward.kind=oracle"]
    assert given_keys(None, args) == {"num_inference_steps"}
    assert given_keys(str(tmp_path / "mine.yaml"), args) == {"num_inference_steps", "eta"}
    assert given_keys(None, args, section=None) == {"seed"}
    assert given_keys(str(tmp_path / "mine.yaml"), args, section=None) == {"seed", "noise_level", "sampling"}
