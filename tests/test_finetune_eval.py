import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_config
from core.errors import UserError
from core.loading import load_model, resolve_model
from evaluation.compare import EvalConfig, evaluate, win_rate
from evaluation.embeddings import frechet_distance
from evaluation.grids import ALIGNED, NOT_ALIGNED, UNJUDGED
from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from pipelines.cli import run
from tiny_models import make_tiny_clip

# what a user brings: ordinary prompts, none of them a shapes-world prompt
ENGLISH = "a photo of a cat on a sofa\nan oil painting of a lighthouse at dusk\n"


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(a, a + 1.0)
    assert shifted == pytest.approx(4.0, rel=1e-6)  # ||mu shift||^2, covariances equal
    assert frechet_distance(a, rng.normal(size=(500, 4)) * 2) > 1.0


def test_win_rate_counts_ties_half():
    base = np.array([0.1, 0.5, 0.5, 0.9])
    assert win_rate(np.array([0.2, 0.5, 0.4, 1.0]), base) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert win_rate(base, base) == 0.5


@pytest.fixture(scope="module")
def setup(tiny_sd, tmp_path_factory):
    """The tiny SD, a tiny CLIP, a learned reward on it (untrained head) and one DPOK run."""
    from tools.random_models import build_reward_model

    d = tmp_path_factory.mktemp("eval")
    clip = make_tiny_clip(d / "clip")
    reward = build_reward_model(clip, d / "reward")
    run_cfg = load_config(FinetuneConfig, None, [
        f"output_dir={d}/dpok", f"model.pipeline={tiny_sd}", "reward.kind=oracle", "sampling.num_inference_steps=2",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=1",
        "dpok.window=[0,null]", "dpok.tail_steps=0", "sample_grid_every=0", "optim.lr=0.05"])
    train_dpok(run_cfg, progress=False)
    return dict(sd=tiny_sd, clip=clip, reward=reward, dpok=d / "dpok")


def test_load_finetuned_fuses_the_lora_into_the_same_model(setup):
    """The evaluated pipeline carries no adapter layers, and samples what base + LoRA samples."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from core.loading import load_sd_pipeline
    from core.sampling import SamplingConfig, generate_images

    fused = load_model(resolve_model(setup["dpok"]))
    assert not any(isinstance(m, BaseTunerLayer) for m in fused.unet.modules())
    adapted = load_sd_pipeline(setup["sd"])
    adapted.load_lora_weights(setup["dpok"])
    base = load_sd_pipeline(setup["sd"])
    sampling = SamplingConfig(num_inference_steps=2, batch_size=2)
    prompts, seeds = ["one red circle", "two blue squares"], [3, 4]
    images = {name: np.stack([np.asarray(im, dtype=int) for im in generate_images(p, prompts, seeds, sampling)])
              for name, p in (("fused", fused), ("adapted", adapted), ("base", base))}
    assert np.abs(images["fused"] - images["adapted"]).max() <= 1  # fp32 rounding at most
    assert np.abs(images["fused"] - images["base"]).max() > 1  # the fine-tuning is in it


def eval_args(s, out, *extra):
    return [f"base={s['sd']}", f"clip={s['clip']}", f"models=[dpok={s['dpok']}]", f"reward.path={s['reward']}",
            "samples_per_prompt=2", "sampling.num_inference_steps=2", f"output_dir={out}", "grid_prompts=2", *extra]


@pytest.mark.slow
def test_eval_base_and_a_finetuned_run_on_shapes_prompts(setup, tmp_path):
    cfg = load_config(EvalConfig, None, eval_args(setup, tmp_path / "report", "samples_per_prompt=1",
                                                  "reward.kind=oracle"))
    results = evaluate(cfg)
    assert [r.name for r in results] == ["base", "dpok"]
    for r in results:
        assert set(r.alignment) == {"color", "count", "background", "combination", "overall"}
        assert np.isfinite(r.reward) and np.isfinite(r.fidelity) and r.n_images == 50
        assert set(r.per_prompt) and np.isfinite(r.controls["overall"])
    assert results[0].reward_win_rate is None and 0 <= results[1].reward_win_rate <= 1
    keep = results[1].keep  # against the base, image by image at the same seeds
    assert results[0].keep is None and keep.n_base_wrong + keep.n_base_right == 50
    assert 0 <= keep.moved_base_right <= 1 or keep.n_base_right == 0
    assert keep.n_base_wrong == 0 or 0 <= keep.moved_outside <= 1  # the oracle's regions of the base images
    report = tmp_path / "report"
    md = (report / "results.md").read_text()
    assert "| dpok |" in md and "overall" in md
    assert "Not read against a frontier" in md and "frontier_scales" in md  # no frontier: the way to one
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "dpok"} and metrics["oracle"] is True
    assert metrics["models"]["dpok"]["keep"]["n_base_right"] == keep.n_base_right
    assert metrics["fidelity_reference"] == "renders of the same prompts"
    assert (report / "samples-base.png").exists() and (report / "samples-dpok.png").exists()
    # the keep grid: drawn when there is a base-right image (or a base-wrong one with a region) to show
    assert (report / "keep.png").exists() or keep.n_base_right == 0
    if (report / "keep.png").exists():
        assert (report / "keep.txt").read_text().startswith("base | dpok\n")
    empty = tmp_path / "empty-run"  # a run that stopped before saving: its config, no weights
    empty.mkdir()
    (empty / "config.yaml").write_bytes((setup["dpok"] / "config.yaml").read_bytes())
    with pytest.raises(UserError, match="holds no fine-tuned model"):
        resolve_model(empty, base=setup["sd"])


@pytest.mark.parametrize("prompts", [ENGLISH, "one red circle\n" + ENGLISH], ids=["english", "mixed"])
def test_eval_any_prompts_with_the_learned_reward(setup, tmp_path, capsys, prompts):
    """`make eval ARGS="prompts_file=<file> base=<sd folder> models=[name=<run>]"`: no oracle columns,
    the learned reward with its win-rate, fidelity to the base model's samples, grids."""
    from pipelines.evaluate import main

    (tmp_path / "prompts.txt").write_text(prompts)
    out = tmp_path / "report"
    assert run(main, eval_args(setup, out, f"prompts_file={tmp_path}/prompts.txt")) == 0
    printed = capsys.readouterr().out
    assert "| model | mean reward | reward win-rate vs base |" in printed and "overall" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oracle"] is False and metrics["fidelity_reference"] == "the base model's samples"
    base, dpok = metrics["models"]["base"], metrics["models"]["dpok"]
    assert base["alignment"] == {} and base["controls"] == {} and base["per_prompt"] == {}
    assert "per_prompt" in metrics["note"] and "shapes-world oracle" in metrics["note"]  # issue 74 item 11
    n = len(prompts.splitlines()) * 2
    assert base["n_images"] == dpok["n_images"] == n
    assert 0 < base["reward"] < 1 and 0 < dpok["reward"] < 1 and 0 <= dpok["reward_win_rate"] <= 1
    assert base["reward_win_rate"] is None
    assert base["fidelity"] == pytest.approx(0, abs=1e-3) and dpok["fidelity"] > 0  # the base is the reference
    assert (out / "samples-dpok.png").exists() and "No oracle columns" in (out / "results.md").read_text()
    with Image.open(out / "samples-dpok.png") as grid:
        assert grid.convert("RGB").getpixel((grid.width - 1, 0)) == UNJUDGED  # no oracle: no frames


def test_eval_fidelity_to_a_reference_folder_of_any_sizes(setup, tmp_path):
    ref = tmp_path / "ref"
    (ref / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(32, 32), (32, 32), (48, 40), (20, 64), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            ref / ("sub" if i % 2 else "") / f"r{i}.{'png' if i < 3 else 'jpg'}")
    (ref / "notes.txt").write_text("not an image: ignored")
    (tmp_path / "prompts.txt").write_text(ENGLISH)
    cfg = load_config(EvalConfig, None, eval_args(setup, tmp_path / "report", f"prompts_file={tmp_path}/prompts.txt",
                                                  f"reference_images={ref}"))
    results = evaluate(cfg)
    assert all(np.isfinite(r.fidelity) and r.fidelity > 0 for r in results)
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["fidelity_reference"] == f"the images in {ref}"


def test_eval_missing_inputs_are_errors_not_skips_or_nan(setup, tmp_path):
    (tmp_path / "prompts.txt").write_text(ENGLISH)
    out = tmp_path / "report"

    def fails(match, *extra):
        with pytest.raises(UserError, match=match):
            evaluate(load_config(EvalConfig, None, eval_args(setup, out, f"prompts_file={tmp_path}/prompts.txt",
                                                             *extra)))
        assert not out.exists()  # refused before anything is sampled or written

    fails("model typo: the run folder .* does not exist", f"models=[dpok={setup['dpok']}, typo={tmp_path}/dpokk]")
    fails("holds no fine-tuned model", f"models=[empty={tmp_path}]")
    fails("used twice", f"models=[a={setup['dpok']}, a={setup['dpok']}]")
    fails("reward model folder .* does not exist", f"reward.path={tmp_path}/no-reward")
    fails("CLIP model folder .* does not exist", f"clip={tmp_path}/no-clip")
    fails("reference image folder .* does not exist", f"reference_images={tmp_path}/no-ref")
    fails("holds 0 image", f"reference_images={tmp_path}")
    fails("need shapes-world prompts", "generalization_split=heldout")
    fails("need shapes-world prompts", "reward.kind=oracle")
    if not torch.cuda.is_available():
        fails("fp16 needs a CUDA device", "mixed_precision=fp16")
    (tmp_path / "one.txt").write_text("a photo of a cat\n")
    fails("needs at least 2", "samples_per_prompt=1", f"prompts_file={tmp_path}/one.txt")


@pytest.mark.slow
def test_eval_targets_and_side_prompts_take_their_own_sample_counts(setup, tmp_path):
    """samples_per_prompt seeds per evaluated prompt (the headline), side_samples_per_prompt per
    control and generalisation prompt; the grids show grid_samples seeds of grid_prompts prompts."""
    from evaluation.oracle import control_prompts
    from shapes.world import prompt_set

    targets = ["three red circles", "two blue squares on a white background"]
    (tmp_path / "targets.txt").write_text("\n".join(targets) + "\n")

    class Count:
        n = 0

        def update(self, k):
            self.n += k

    seen = Count()
    out = tmp_path / "report"
    results = evaluate(load_config(EvalConfig, None, eval_args(
        setup, out, f"prompts_file={tmp_path}/targets.txt", "samples_per_prompt=3", "side_samples_per_prompt=1",
        "generalization_split=heldout", "grid_samples=2", "reward.kind=oracle")), progress=seen)
    assert all(r.n_images == 2 * 3 for r in results)
    side = len(control_prompts(set(targets))) + len(prompt_set("heldout"))
    assert seen.n == len(results) * (2 * 3 + side * 1)  # every model sampled each side prompt once
    with Image.open(out / "samples-base.png") as grid:
        cell = 32 + 2 * 3  # the tiny SD's 32-px images in their 3-px frames
        assert grid.height == 2 * cell and grid.width > 2 * cell  # grid_prompts=2 rows; a label, grid_samples=2
        # the oracle judged them: each sample framed green or red
        assert {grid.convert("RGB").getpixel((grid.width - 1 - c * cell, r * cell))
                for c in range(2) for r in range(2)} <= {ALIGNED, NOT_ALIGNED}
    assert (out / "samples-base.txt").read_text().splitlines() == targets
    assert "1 per control and generalisation prompt" in (out / "results.md").read_text()
    for bad in ("side_samples_per_prompt=0", "grid_samples=0"):
        with pytest.raises(UserError, match=f"{bad} must be >= 1"):
            evaluate(load_config(EvalConfig, None, eval_args(
                setup, tmp_path / "bad", f"prompts_file={tmp_path}/targets.txt", bad, "reward.kind=oracle")))
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_eval_samples_at_the_runs_own_setting_unless_given(setup, tmp_path, capsys):
    """#56.5: `make eval` without sampling keys samples base and runs at the runs' own setting (the
    tiny run trained at 2 steps) and says so in the report; a given key wins; runs trained at
    different settings are one error, before any sampling."""
    import shutil

    import yaml

    from evaluation.settings import eval_setting, given_keys
    from pipelines.evaluate import main

    out = tmp_path / "report"
    args = [a for a in eval_args(setup, out) if not a.startswith("sampling.")]
    assert run(main, args) == 0
    text = (out / "results.md").read_text()
    assert "2 DDIM steps, guidance 5, eta 1, at the model's native size (the runs' own" in text
    assert yaml.safe_load((out / "config.yaml").read_text())["sampling"]["num_inference_steps"] == 2
    cfg = load_config(EvalConfig, None, args + ["sampling.guidance_scale=3"])
    cfg, note = eval_setting(cfg, given_keys(None, args + ["sampling.guidance_scale=3"]))
    assert cfg.sampling.num_inference_steps == 2 and cfg.sampling.guidance_scale == 3 and "guidance_scale as configured" in note
    other = tmp_path / "other-run"
    shutil.copytree(setup["dpok"], other)
    run_cfg = yaml.safe_load((other / "config.yaml").read_text())
    run_cfg["sampling"]["num_inference_steps"] = 7
    (other / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    two = [a for a in args if not a.startswith("models=")] + [f"models=[a={setup['dpok']}, b={other}]"]
    capsys.readouterr()
    assert run(main, two) == 2
    err = capsys.readouterr().err
    assert "different sampling settings" in err and "num_inference_steps 7" in err
    # the fix the error names works: the key the runs differ in, set for every model
    cfg = load_config(EvalConfig, None, two + ["sampling.num_inference_steps=3"])
    cfg, note = eval_setting(cfg, given_keys(None, two + ["sampling.num_inference_steps=3"]))
    assert cfg.sampling.num_inference_steps == 3 and "num_inference_steps as configured" in note


def test_the_table_prints_a_fidelity_that_rounds_to_zero_as_0_0000():
    """Issue 74 item 11: the base's fidelity to its own samples is a hair below zero; it printed -0.0000."""
    from evaluation.compare import ModelEval, markdown_table

    rows = [ModelEval("base", {}, {}, 0.5, -0.0, 4), ModelEval("run", {}, {}, 0.5, -2e-7, 4, reward_win_rate=0.5)]
    table = markdown_table(rows)
    assert "-0.0000" not in table and table.count("| 0.0000 |") == 2


def test_eval_takes_the_runs_trained_size_unless_given(tiny_sd, tmp_path):
    """Issue 74 item 11: a run trained at 64x32 (width x height) was evaluated at the model's native
    size without a word; now at the run's size, and the report's line names the size used."""
    from core.loading import LORA_WEIGHTS
    from evaluation.settings import eval_setting

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        f"model:\n  pipeline: {tiny_sd}\nsampling:\n  num_inference_steps: 2\n  guidance_scale: 5.0\n"
        "  eta: 1.0\n  height: 32\n  width: 64\n")
    (run_dir / LORA_WEIGHTS).write_bytes(b"weights")  # resolve_model only hashes them
    cfg = load_config(EvalConfig, None, [f"base={tiny_sd}", f"models=[r={run_dir}]"])
    taken, note = eval_setting(cfg, set())
    assert (taken.sampling.height, taken.sampling.width) == (32, 64) and "at 64x32 (width x height)" in note
    given, note = eval_setting(replace_sampling(cfg, height=48, width=48), {"height", "width"})
    assert (given.sampling.height, given.sampling.width) == (48, 48) and "at 48x48" in note


def replace_sampling(cfg, **changes):
    from dataclasses import replace

    return replace(cfg, sampling=replace(cfg.sampling, **changes))
