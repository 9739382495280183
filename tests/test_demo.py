"""Tier 2: `make demo`'s whole loop on tiny models (speed and targets are measured by `make demo`
itself on the real shapes-world models)."""

import pytest

import json

from core.config import load_config
from finetune.config import FinetuneConfig
from pipelines.cli import run
from pipelines.demo import main
from tiny_models import make_tiny_clip


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(tiny_sd, tmp_path, capsys):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    args = [f"pipeline={tiny_sd}", f"clip={clip}", f"root={tmp_path}/ds", f"runs={tmp_path}/runs",
            f"report={tmp_path}/report", "per_prompt=2", "raters=3", "overlap=2", "eval_samples_per_prompt=1",
            "generate_args=[sampling.num_inference_steps=2, max_prompts=24]",
            "reward_args=[train.epochs=2, train.ablation_seeds=1, data.min_val_prompts=3, progress=false]",
            "rwl_args=[sampling.num_inference_steps=2, rwl.samples_per_prompt=1, rwl.pretrain_per_prompt=1, rwl.steps=2, "
            "rwl.batch_size=4, prompts.split=heldout]",
            # the shipped config's shape: a window of trained steps, then a deterministic tail
            "dpok_args=[sampling.num_inference_steps=4, dpok.rounds=2, dpok.prompts_per_round=2, dpok.samples_per_prompt=2, "
            "dpok.window=[1, 2], dpok.steps_per_sample=1, dpok.tail_steps=1, dpok.minibatch_size=4]",
            "eval_args=[sampling.num_inference_steps=2, grid_prompts=2]",
            # a random tiny model is rarely right: noisy raters and a wide rule still give targets
            "flip_rate=0.4", "rule.min_images=1", "rule.max_good_rate=1.0", "min_targets=1", "oracle_upper_bound=true",
            # the raters mark, the reward learns a region head, DRaFT + Focus-N-Fix runs beside plain DPOK
            "regions=true", "region_weight=0.5", "region_steps=2",
            "draft_args=[sampling.num_inference_steps=2, draft.batch_size=2]",
            # and DPO / KTO on the targets' labels, no reward model, each a row beside RWL and DPOK
            "label_methods=[dpo, kto]",
            "dpo_args=[sampling.num_inference_steps=2, dpo.steps=2, dpo.batch_size=4, dpo.ties=half, dpo.binary_pairs=true]",
            "kto_args=[sampling.num_inference_steps=2, kto.steps=2, kto.batch_size=4]"]
    assert run(main, args) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    chosen = results["targets_chosen"]
    assert chosen and (tmp_path / "runs" / "targets.txt").read_text().splitlines() == chosen
    for model in ("base", "rwl", "dpok", "dpok_oracle", "draft_region", "dpo", "kto"):
        assert set(results[model]["targets"]) == {"color", "count", "background", "combination", "overall"}
        assert "overall" in results[model]["controls"] and "overall" in results[model]["generalization"]
        assert set(results[model]["per_prompt"]) == set(chosen)  # evaluated on the targets
        assert results[model]["reward"] is not None and results[model]["fidelity"] is not None
    for view in ("val_images", "val_prompts"):
        assert {"pairwise_accuracy_vs_oracle", "zero_shot_clip_pairwise_accuracy_vs_oracle"} <= set(results["reward_model"][view])
    assert set(results["seconds"]) >= {"generate", "simulate-raters", "targets", "reward", "finetune-rwl",
                                       "finetune-dpok", "finetune-dpok-oracle", "finetune-draft-region", "finetune-dpo",
                                       "finetune-kto", "evaluate", "total"}
    # regions=true reads the keep table against plain DPOK turned down (region_frontier_scales)
    assert set(results["hacking"]) == {"rwl", "dpok", "dpok_oracle", "draft_region", "dpo", "kto",
                                       "dpok@0.1", "dpok@0.25", "dpok@0.5"}
    # DPO / KTO read the demo's own labels, of the targets only, and say what they learnt from
    dpo, kto = results["label_methods"]["dpo"], results["label_methods"]["kto"]
    assert dpo["steps"] == kto["steps"] == 2 and dpo["ranking_pairs"] + dpo["binary_pairs"] > 0 and kto["images"] > 0
    assert dpo["prompts"] <= len(chosen) and kto["prompts"] <= len(chosen)
    # the oracle's learning curve of every DPOK run: before training and at the last round
    assert {m: [p["round"] for p in c] for m, c in results["curves"].items()} == {
        "dpok": [0, 2], "dpok_oracle": [0, 2]}
    # regions: the marks came with the labels, the reward's region head was measured, the report says so
    assert results["labels"]["added_marks"] > 0 and results["region_weight"] == 0.5
    assert "heatmap_auc" in results["reward_model"]["region_val_images"]
    saved = {run: load_config(FinetuneConfig, tmp_path / "runs" / run / "config.yaml")
             for run in ("finetune-dpok", "finetune-draft-region")}
    assert {run: (c.method, c.seed, c.region.weight, c.prompts.prompts_file, c.reward.path)
            for run, c in saved.items()} == {  # the same reward, targets and seed; beta on DRaFT only
        run: (method, 0, weight, str(tmp_path / "runs" / "targets.txt"), str(tmp_path / "runs" / "reward"))
        for run, method, weight in (("finetune-dpok", "dpok", 0.0), ("finetune-draft-region", "draft", 0.5))}
    assert saved["finetune-draft-region"].draft.steps == 2 and saved["finetune-draft-region"].draft.batch_size == 2
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert "| draft_region |" in report_md and "Focus-N-Fix" in report_md
    assert "frontier" in results["draft_region"] and "Frontier and floor" in report_md
    assert "| dpo |" in report_md and "| kto |" in report_md and "Diffusion-KTO on their binary answers" in report_md
    for f in ("report.md", "report.html", "learning_curves.png", "samples_before_after.png", "per_prompt.png"):
        assert (tmp_path / "report" / f).exists(), f
    assert "make label" in capsys.readouterr().out

    # A rerun with the same seed (into the same folders, which the demo made and may replace) gives the
    # same numbers: only the timings may differ.
    assert run(main, args) == 0
    again = json.loads((tmp_path / "report" / "results.json").read_text())
    for r in (results, again):
        r.pop("seconds")
    assert again == results


def test_demo_refuses_to_replace_a_folder_it_did_not_make(tiny_sd, tmp_path, capsys):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    precious = tmp_path / "labels"
    precious.mkdir()
    (precious / "keep.txt").write_text("a rater's work")
    rc = run(main, [f"pipeline={tiny_sd}", f"clip={clip}", f"root={precious}", f"runs={tmp_path}/runs",
                    f"report={tmp_path}/report"])
    assert rc == 2
    assert "was not made by `make demo`" in capsys.readouterr().err
    assert (precious / "keep.txt").read_text() == "a rater's work"


def test_too_few_targets_is_a_clear_error(tiny_sd, tmp_path, capsys):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    rc = run(main, [f"pipeline={tiny_sd}", f"clip={clip}", f"root={tmp_path}/ds", f"runs={tmp_path}/runs",
                    f"report={tmp_path}/report", "per_prompt=1", "raters=2", "overlap=1",
                    "generate_args=[sampling.num_inference_steps=1, max_prompts=4]"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "passes the target rule" in err or "the target rule picked" in err, err


def test_a_bad_stage_override_fails_before_any_stage_runs(tiny_sd, tmp_path, capsys):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    rc = run(main, [f"pipeline={tiny_sd}", f"clip={clip}", f"root={tmp_path}/ds", f"runs={tmp_path}/runs",
                    f"report={tmp_path}/report", "dpok_args=[dpok.no_such_key=1]"])
    assert rc == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "runs").exists()
