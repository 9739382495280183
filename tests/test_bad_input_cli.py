"""Bad input through the entry points (issue 44, items 5-10 and 14): one line ``error: ... Fix:
...`` and exit status 2 before any model loads or any file is written, and nothing already saved
replaced or deleted."""

from __future__ import annotations

import pytest
import torch
import yaml

from core.config import save_config
from data import Store
from pipelines.cli import run
from shapes.render import render_round
from shapes.world import prompt_set


def one_error_line(capsys, *parts: str) -> str:
    """The stderr of a refused command ends with its one error line (before it at most an empty
    progress bar, no traceback), naming every one of ``parts``."""
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1] if lines else ""
    assert err.startswith("error: ") and " Fix: " in err and "Traceback" not in "".join(lines), lines
    assert sum(line.startswith("error: ") for line in lines) == 1, lines
    for part in parts:
        assert part in err, (part, err)
    return err


def tree(path) -> dict:
    """Every file under ``path`` with its bytes: what a refused command must leave as it was."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def finetune(*args: str) -> int:
    from pipelines.finetune import main

    return run(main, list(args))


# -- items 5, 6 and 8: numbers out of range fail when the config loads ----------------------------

@pytest.mark.parametrize("override, message", [
    ("dpok.samples_per_prompt=0", "dpok.samples_per_prompt=0 must be >= 1"),  # was an IndexError
    ("dpok.rounds=-1", "dpok.rounds=-1 must be >= 1"),
    ("dpok.rounds=0", "dpok.rounds=0 must be >= 1"),
    ("dpok.minibatch_size=0", "dpok.minibatch_size=0 must be >= 1"),
    ("log_every=0", "log_every=0 must be >= 1"),
    ("method=rwl rwl.steps=-5", "rwl.steps=-5 must be >= 1"),
    ("method=rwl rwl.batch_size=0", "rwl.batch_size=0 must be >= 1"),
])
def test_finetune_counts_out_of_range_fail_before_the_model_loads(tiny_sd, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert finetune(f"output_dir={out}", f"model.pipeline={tiny_sd}", "reward.kind=oracle", *override.split()) == 2
    one_error_line(capsys, message)
    assert not out.exists()  # no config.yaml, no rwl_data.pt


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr=-1.0 must be > 0"),  # trained and saved a diverged model before
    ("train.lr=inf", "'train.lr' is inf"),
    ("model.hidden=[16,0]", "model.hidden[1]=0 must be >= 1"),
    ("model.dropout=1.5", "model.dropout=1.5 must be in [0, 1]"),
    ("loss.aux_num_prompts=1", "loss.aux_num_prompts=1 must be >= 2"),
])
def test_reward_numbers_out_of_range_fail_before_anything_is_written(tmp_path, capsys, override, message):
    from pipelines.train_reward import main

    out = tmp_path / "reward"
    assert run(main, [f"data.root={tmp_path}/none", f"out_dir={out}", override]) == 2
    one_error_line(capsys, message)
    assert not out.exists()


# -- issue 58, items 4 and 5: make generate's numbers out of range ----------------------------------

@pytest.mark.parametrize("override, message", [
    ("max_prompts=-1", "max_prompts=-1 must be >= 1"),  # silently dropped the last prompt
    ("max_prompts=0", "max_prompts=0 must be >= 1"),  # made 0 images and exited 0
    ("per_prompt=0", "per_prompt=0 must be >= 1"),
    ("renderer_mismatch_rate=1.5", "renderer_mismatch_rate=1.5 must be in [0, 1]"),
    ("sampling.guidance_scale=-3", "sampling.guidance_scale=-3.0 must be >= 1"),  # was recorded as given
    ("sampling.batch_size=0", "sampling.batch_size=0 must be >= 1"),  # was a ValueError traceback
    ("sampling.num_inference_steps=0", "sampling.num_inference_steps=0 must be >= 1"),  # a ZeroDivisionError
    ("sampling.eta=1.5", "sampling.eta=1.5 must be in [0, 1]"),
    ("sampling.height=-8", "sampling.height=-8 must be >= 1"),
])
def test_generate_numbers_out_of_range_fail_before_anything_is_written(tmp_path, capsys, override, message):
    from pipelines.generate import main

    root = tmp_path / "round"
    for source in ("source=renderer", f"pipeline={tmp_path}/no-model"):  # refused before the model is looked for
        assert run(main, [f"root={root}", source, override]) == 2
        one_error_line(capsys, message)
        assert not root.exists()


# -- item 7: a reward model with non-finite weights --------------------------------------------------

@pytest.fixture(scope="module")
def nan_reward(tmp_path_factory):
    """A tiny CLIP and a reward model folder on it whose head holds a NaN."""
    from safetensors.torch import load_file, save_file

    from tools.random_models import build_reward_model
    from tiny_models import make_tiny_clip

    d = tmp_path_factory.mktemp("nan-reward")
    clip = make_tiny_clip(d / "clip", image_size=32)
    folder = build_reward_model(clip, d / "reward")
    state = load_file(folder / "head.safetensors")
    name = next(k for k in state if k.startswith("mlp."))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, folder / "head.safetensors")
    return dict(clip=clip, reward=folder)


def test_score_rewards_names_the_model_folder_with_nan_weights(nan_reward, tmp_path, capsys):
    from pipelines.score_rewards import main

    root = tmp_path / "round"
    render_round(Store(root), prompt_set("train")[:2], per_prompt=1)
    before = tree(root)
    assert run(main, [f"root={root}", f"model={nan_reward['reward']}", "device=cpu", "progress=false"]) == 2
    one_error_line(capsys, f"the reward model in {nan_reward['reward']}", "NaN or infinite")
    assert tree(root) == before  # no rewards table


def test_eval_refuses_a_reward_model_with_nan_weights(nan_reward, tiny_sd, tmp_path, capsys):
    from pipelines.evaluate import main

    out = tmp_path / "report"
    assert run(main, [f"base={tiny_sd}", f"clip={nan_reward['clip']}", "models=[]",
                      f"reward.path={nan_reward['reward']}", "samples_per_prompt=2",
                      "sampling.num_inference_steps=2", f"output_dir={out}"]) == 2
    one_error_line(capsys, f"the reward model in {nan_reward['reward']}", "NaN or infinite")
    assert not out.exists()


def test_finetune_refuses_a_reward_model_with_nan_weights_before_writing(nan_reward, tiny_sd, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(f"output_dir={out}", f"model.pipeline={tiny_sd}", f"reward.path={nan_reward['reward']}") == 2
    one_error_line(capsys, f"the reward model in {nan_reward['reward']}")
    assert not out.exists()


# -- item 9: files replaced or deleted without a word -----------------------------------------------

@pytest.fixture
def labelled_round(tmp_path):
    from labeling_app.simulate import simulate_round
    from shapes.raters import default_panel

    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:6], per_prompt=4, seed=1, mismatch_rate=0.5)
    simulate_round(store, default_panel(3, flip_rate=0.1), overlap=2, ranking=False)
    return store.root


def test_targets_never_replace_the_table_beside_the_prompts_file(labelled_round, tmp_path, capsys):
    from pipelines.targets import main

    table = tmp_path / "f.csv"
    table.write_text("my table\n")
    assert run(main, [f"root={labelled_round}", f"out={tmp_path}/f.txt", "rule.min_images=1"]) == 2
    one_error_line(capsys, f"{table} already exists", "overwrite=true")
    assert table.read_text() == "my table\n" and not (tmp_path / "f.txt").exists()

    # out=<name>.csv: the table, written beside the prompts file as <name>.csv, would replace it
    assert run(main, [f"root={labelled_round}", f"out={tmp_path}/g.csv", "rule.min_images=1"]) == 2
    one_error_line(capsys, f"out={tmp_path}/g.csv", "targets.txt")
    assert not (tmp_path / "g.csv").exists()


def _dpok_args(tiny_sd, out, *extra):
    return [f"output_dir={out}", f"model.pipeline={tiny_sd}", "reward.kind=oracle", "sampling.num_inference_steps=2",
            "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.window=[0,null]",
            "dpok.tail_steps=0", "dpok.steps_per_sample=1", "curve_every=0",
            "sample_grid_every=0", *extra]


def _saved_run(tiny_sd, out, *extra, files=()) -> None:
    """A run folder as a fine-tuning run leaves it (its config.yaml, a checkpoint, ``files``),
    without training: every refusal below comes before anything would load it."""
    from core.config import load_config
    from finetune.config import CONFIGS, FinetuneConfig

    cfg = load_config(FinetuneConfig, CONFIGS / "dpok.yaml", ["method=dpok", *_dpok_args(tiny_sd, out, *extra)])
    save_config(cfg, out / "config.yaml")
    (out / "checkpoints" / "step-000001").mkdir(parents=True)
    (out / "checkpoints" / "step-000001" / "state.pt").write_bytes(b"a checkpoint")
    for f in files:
        (out / f).write_bytes(b"kept")


def test_finetune_refuses_another_stages_config_yaml(tiny_sd, tmp_path, capsys):
    out = tmp_path / "reward"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"data": {"root": "datasets/shapes"}, "out_dir": str(out)}))
    before = tree(out)
    assert finetune(*_dpok_args(tiny_sd, out, "dpok.rounds=1")) == 2
    one_error_line(capsys, f"{out / 'config.yaml'} is not the config of a fine-tuning run", "overwrite=true")
    assert tree(out) == before


def test_finetune_refuses_a_run_with_another_config_that_stopped_before_its_first_checkpoint(tiny_sd, tmp_path, capsys):
    out = tmp_path / "run"
    _saved_run(tiny_sd, out, "seed=7")
    (out / "checkpoints" / "step-000001" / "state.pt").unlink()
    (out / "checkpoints" / "step-000001").rmdir()
    before = tree(out)
    assert finetune(*_dpok_args(tiny_sd, out, "dpok.rounds=2")) == 2
    one_error_line(capsys, "holds a run with a different config", "resume=false")
    assert tree(out) == before


@pytest.mark.parametrize("method", ["dpok", "rwl"])
def test_resume_false_on_a_finished_run_refuses_and_deletes_nothing(tiny_sd, tmp_path, capsys, method):
    out = tmp_path / "b"
    _saved_run(tiny_sd, out, files=("metrics.json", "pytorch_lora_weights.safetensors", "rwl_data.pt"))
    before = tree(out)
    assert finetune(*_dpok_args(tiny_sd, out, f"method={method}", "resume=false")) == 2
    one_error_line(capsys, "already holds a finished run", "overwrite=true")
    assert tree(out) == before  # checkpoints and rwl_data.pt still there


def test_resuming_past_the_checkpoint_is_refused_before_the_model_loads(tiny_sd, tmp_path, capsys):
    out = tmp_path / "run"
    _saved_run(tiny_sd, out, "dpok.rounds=4")
    (out / "checkpoints" / "step-000001").rename(out / "checkpoints" / "step-000003")
    before = tree(out)
    assert finetune(*_dpok_args(tiny_sd, out, "dpok.rounds=3")) == 2
    one_error_line(capsys, "checkpoint at 3, at or past dpok.rounds=3", "raise dpok.rounds above 3")
    assert tree(out) == before  # config.yaml not rewritten with dpok.rounds=3


# -- item 10: simulate-raters and label-export -------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("raters=-3", "raters=-3 must be >= 1"),
    ("raters=0", "raters=0 must be >= 1"),
    ("flip_rate=1.5", "flip_rate=1.5 must be in [0, 1]"),
    ("max_labels_per_rater=0", "max_labels_per_rater=0 must be >= 1"),
])
def test_simulate_raters_bad_numbers_write_nothing(tmp_path, capsys, override, message):
    from pipelines.simulate_raters import main

    root = tmp_path / "round"
    render_round(Store(root), prompt_set("train")[:3], per_prompt=2)
    before = tree(root)
    assert run(main, [f"label.root={root}", override]) == 2
    one_error_line(capsys, message)
    assert tree(root) == before  # no gold table, no configs/


def test_a_failed_export_leaves_no_temporary_folder(labelled_round, monkeypatch):
    import labeling_app.export as export

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_parquet", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export.export_round(Store(labelled_round))
    assert list((labelled_round / "exports").iterdir()) == []


# -- item 14: TensorBoard after a resume ----------------------------------------------------------------

def test_a_resumed_dpok_run_writes_each_rounds_tensorboard_points_once(tiny_sd, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.config import load_config
    from finetune.config import FinetuneConfig
    from finetune.dpok import train_dpok

    cfg = load_config(FinetuneConfig, None, ["method=dpok", *_dpok_args(
        tiny_sd, tmp_path / "run", "dpok.rounds=4", "dpok.checkpoint_every_rounds=2")])

    def killed_in_round_3(row):  # after round 3 was logged, before its checkpoint (round 4)
        if row.round == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpok(cfg, progress=False, on_round=killed_in_round_3)
    train_dpok(cfg, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "dpok"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward_mean")] == [1, 2, 3, 4]
