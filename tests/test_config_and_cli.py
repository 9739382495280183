import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from core.config import load_config, save_config
from core.errors import UserError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Cfg:
    method: Literal["dpok", "rwl"] = "dpok"
    steps: int = 10
    name: str | None = None
    use_lora: bool = True
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.001\n")
    cfg = load_config(Cfg, path, ["optim.betas=[0.5, 0.6]", "method=rwl", "name=run1"])
    assert cfg == Cfg(method="rwl", steps=20, name="run1", optim=Optim(lr=1e-3, betas=(0.5, 0.6)))
    assert load_config(Cfg, None, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML 1.1 reads this as a string
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Cfg, saved) == cfg


def test_yaml_11_booleans_follow_the_field_type(tmp_path):
    @dataclass(frozen=True)
    class P:
        precision: Literal["no", "fp16"] = "fp16"
        flag: bool = False
        name: str = "x"

    assert load_config(P, None, ["precision=no", "flag=yes", "name=no"]) == P("no", True, "no")
    path = tmp_path / "p.yaml"
    path.write_text("precision: no\nflag: on\n")
    assert load_config(P, path) == P("no", True, "x")


def test_a_list_of_overrides_may_hold_list_values_unquoted():
    """A workflow's ``dpok_args=[...]`` holding ``dpok.window=[0,8]``: YAML's flow syntax cannot read
    the inner brackets unquoted, so the list is split at its top-level commas; a list YAML reads
    is read by YAML."""
    from core.config import parse_overrides

    assert parse_overrides(["dpok_args=[dpok.window=[0,8],dpok.rounds=40]"]) == {
        "dpok_args": ["dpok.window=[0,8]", "dpok.rounds=40"]}
    assert parse_overrides(["a=[x=1, y=[1, [2]], z]"]) == {"a": ["x=1", "y=[1, [2]]", "z"]}
    assert parse_overrides(["b=[1, 2]", "c=[x, 'y=[1]']", "d=]x["]) == {"b": [1, 2], "c": ["x", "y=[1]"], "d": "]x["}
    with pytest.raises(UserError, match="optim.betas.1.' must be a number"):  # a split item is a string
        load_config(Cfg, None, ["optim.betas=[0.5,[0.6]]"])


@pytest.mark.parametrize("override, message", [
    (["method=ppo"], "not one of \\['dpok', 'rwl'\\]"),
    (["optim.lrr=1"], "unknown config key\\(s\\): optim.lrr"),
    (["steps=ten"], "must be an integer"),
    (["optim.lr=.nan"], "NaN"),
    (["use_lora=maybe"], "true or false"),
    (["steps"], "has no '='"),
])
def test_bad_values_are_one_clear_error(override, message):
    with pytest.raises(UserError, match=message):
        load_config(Cfg, None, override)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_oracle_check_entry_point(capsys):
    from pipelines.oracle_check import main
    from pipelines.cli import run

    assert run(main, ["n_images=40", "sweep_per_step=2", "correct_per_variant=4", "agreement_samples_per_prompt=0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["render_accuracy"] >= 0.99 and result["targets_met"]
    assert run(main, ["n_images=abc"]) == 2
    assert "must be an integer" in capsys.readouterr().err


def test_one_sampling_config_for_every_stage():
    """Generation, evaluation, fine-tuning and the step probe sample with one config
    (core.sampling.SamplingConfig), so its keys and bounds mean the same everywhere, and the
    fine-tuning config's old names are refused, not silently ignored."""
    import dataclasses
    import typing

    from core.sampling import SamplingConfig
    from evaluation.config import EvalConfig
    from finetune.config import FinetuneConfig
    from collect.generate import GenerateConfig
    from tools.probe import ProbeConfig

    for cls in (GenerateConfig, EvalConfig, FinetuneConfig, ProbeConfig):
        assert typing.get_type_hints(cls)["sampling"] is SamplingConfig, cls
    assert {f.name for f in dataclasses.fields(SamplingConfig)} == {
        "num_inference_steps", "scheduler", "guidance_scale", "eta", "batch_size", "height", "width", "compile",
        "max_sequence_length"}
    for old in ("sampling.num_steps=20", "checkpoint_every=5"):
        with pytest.raises(UserError):
            load_config(FinetuneConfig, None, [old])
    cfg = load_config(FinetuneConfig, None, ["dpok.checkpoint_every_rounds=3", "rwl.checkpoint_every_steps=200"])
    assert (cfg.dpok.checkpoint_every_rounds, cfg.rwl.checkpoint_every_steps) == (3, 200)


def test_a_run_saved_with_old_config_names_is_refused_with_the_fix(tmp_path):
    """Resuming a folder whose saved config.yaml uses a renamed key: one error naming the folder
    and the fix, not a bare "unknown key"."""
    from finetune.checkpoints import check_resumable
    from finetune.config import FinetuneConfig

    (tmp_path / "config.yaml").write_text("method: dpok\ncheckpoint_every: 5\nsampling:\n  num_steps: 20\n")
    with pytest.raises(UserError, match=r"saved config no longer loads \(unknown config key\(s\): "
                                        r"checkpoint_every\).*resume=false"):
        check_resumable(tmp_path, load_config(FinetuneConfig, None, []))


@pytest.mark.parametrize("config, override, message", [
    ("finetune", "optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("finetune", "sampling.eta=0", "DPOK needs stochastic sampling"),
    ("finetune", "optim.lr_floor=2", "'optim.lr_floor' was removed"),
    ("reward", "train.epochs=0", "train.epochs=0 must be >= 1"),
    ("reward", "loss.aux_temperature=0", "aux_temperature=0.0 must be > 0"),
    ("reward", "model.features=[]", "model.features is empty"),
    ("labeling", "overlap=0", "each item needs at least one rater"),
    ("targets", "max_good_rate=0", "the good-rate band"),
])
def test_every_stage_config_checks_its_values_when_it_loads(config, override, message):
    """One validation style: a stage's frozen config refuses a bad value in __post_init__, so
    `load_config` (and any entry point) fails before anything runs or is written."""
    from data.targets import TargetRule
    from finetune.config import FinetuneConfig
    from labeling_app.config import LabelConfig
    from reward.config import RewardConfig

    cls = {"finetune": FinetuneConfig, "reward": RewardConfig, "labeling": LabelConfig, "targets": TargetRule}[config]
    with pytest.raises(UserError, match=message):
        load_config(cls, None, [override])
