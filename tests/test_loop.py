"""Tier 2: `make loop`'s rounds on tiny models: every round's stages, the fine-tuned model's images
in the next round, raters on the selected images only, resuming after a kill (Ctrl-C in DPOK,
SIGKILL in a label stage), the same seed twice, and bad input refused before anything is written.
(The full loop's figures are `make loop`'s own.)"""

import pytest

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from data import read_table
from pipelines.cli import run
from pipelines.loop import main
from tiny_models import make_tiny_clip
from workflows.round import Stages


def _args(tiny_sd, clip, tmp_path, *extra):
    return [f"pipeline={tiny_sd}", f"clip={clip}", f"root={tmp_path}/ds", f"runs={tmp_path}/runs",
            f"report={tmp_path}/report", "rounds=2", "per_prompt=2", "round_per_prompt=2", "budget=8",
            "raters=3", "overlap=1", "eval_samples_per_prompt=1", "eval_side_samples_per_prompt=1",
            "generate_args=[sampling.num_inference_steps=2, max_prompts=24]",
            "reward_args=[train.epochs=2, train.ablation_seeds=1, data.min_val_prompts=3, progress=false]",
            "dpok_args=[sampling.num_inference_steps=4, dpok.rounds=1, dpok.prompts_per_round=2, dpok.samples_per_prompt=2, "
            "dpok.window=[1, 2], dpok.steps_per_sample=1, dpok.tail_steps=1, dpok.minibatch_size=4]",
            "eval_args=[sampling.num_inference_steps=2, grid_prompts=2]",
            "flip_rate=0.4", "rule.min_images=1", "rule.max_good_rate=1.0", "min_targets=1", *extra]


def _without_timings(path):
    res = json.loads(path.read_text())
    res.pop("seconds")
    for r in res["rounds"]:
        r.pop("seconds")
    return res


@pytest.mark.slow
def test_loop_runs_its_rounds_resumes_and_repeats(tiny_sd, tmp_path, capsys, monkeypatch):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    args = _args(tiny_sd, clip, tmp_path)
    assert run(main, args) == 0
    results = _without_timings(tmp_path / "report" / "results.json")
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    assert results["rounds"][1]["labels_spent"] > results["rounds"][0]["labels_spent"]
    assert {"one_shot", "oracle", "checks", "hacking"} <= set(results)
    assert (tmp_path / "report" / "alignment_vs_labels.png").exists()
    # the lead is told that the model the loop ends with is unjudged, and what to ship if it fell back
    assert "Round 1's model, the one this loop ends with, made no labelled images" in \
        (tmp_path / "report" / "report.md").read_text()
    # round 1 was sampled from round 0's fine-tuned model, and the raters saw only its selection
    gens = read_table(tmp_path / "ds", "generations")
    later = gens[gens["round"] == 1]
    assert len(later) and set(later["run"]) == {str(tmp_path / "runs" / "round-0" / "dpok")}
    assert gens.loc[gens["round"] == 0, "run"].isna().all()
    chosen = set(read_table(tmp_path / "ds", "selections", rounds="1")["image_id"])
    assert len(chosen) == 8
    assert set(read_table(tmp_path / "ds", "binary_labels", rounds="1")["image_id"]) <= chosen
    # the continued run records its lineage back to the base
    lineage = json.loads((tmp_path / "runs" / "round-1" / "dpok" / "lineage.json").read_text())
    assert "round-0" in json.dumps(lineage)

    # Killed during round 1's fine-tuning (Ctrl-C), then the same command again: the finished
    # stages are skipped and the results are those of the run that was never interrupted.
    from finetune.train import TRAIN

    real, calls = TRAIN["dpok"], []

    def killed_in_round_1(fcfg):
        calls.append(fcfg.output_dir)
        if "round-1" in fcfg.output_dir:
            raise KeyboardInterrupt
        return real(fcfg)

    monkeypatch.setitem(TRAIN, "dpok", killed_in_round_1)
    assert run(main, args + ["fresh=true"]) == 130
    assert not (tmp_path / "report" / "results.json").exists()
    monkeypatch.setitem(TRAIN, "dpok", real)
    capsys.readouterr()
    assert run(main, args) == 0
    err = capsys.readouterr().err
    assert "round-0/dpok (done before)" in err and "== loop: round-1/dpok\n" in err
    assert _without_timings(tmp_path / "report" / "results.json") == results

    # SIGKILLed in round 0's label stage with labels written, then the same command again: the
    # labels, and so everything after them, are those of the run never interrupted.
    _kill_in_round_0_labels(args + ["fresh=true"], tmp_path)
    assert not (tmp_path / "runs" / "stages" / "round-0" / "label.json").exists()  # killed inside the stage
    assert run(main, args) == 0
    assert _without_timings(tmp_path / "report" / "results.json") == results

    # The same seed from scratch gives the same results.
    assert run(main, args + ["fresh=true"]) == 0
    assert _without_timings(tmp_path / "report" / "results.json") == results


def test_a_resumed_stage_counts_the_time_it_took_when_it_ran(tmp_path):
    """A rerun returns a finished stage's summary without running it, and still counts its time,
    so a resumed loop's stage time is what its stages cost (not 0)."""
    Stages("loop", tmp_path).run("round-0/dpok", lambda: {"x": 1})
    path = tmp_path / "stages" / "round-0" / "dpok.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seconds": 151.1}))  # as a real DPOK stage took
    again = Stages("loop", tmp_path)
    assert again.run("round-0/dpok", lambda: pytest.fail("a finished stage ran again")) == {"x": 1, "seconds": 151.1}
    again.run("round-1/dpok", lambda: {"x": 2})
    assert again.seconds["round-0/dpok"] == 151.1 and set(again.seconds) == {"round-0/dpok", "round-1/dpok"}


@pytest.mark.slow
def test_loop_runs_two_rounds_on_a_flow_model(tmp_path):
    """A shapes-flow-shaped SD3 folder (no T5, sampled with max_sequence_length=0) through every
    stage of two rounds: generate, label, reward, DPOK on the flow SDE, continued from round 0's
    run, and the evaluation on the ODE."""
    from tiny_models import make_tiny_flow

    flow = make_tiny_flow(tmp_path / "flow")
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    assert run(main, _args(flow, clip, tmp_path, "max_sequence_length=0", "oracle_upper_bound=false")) == 0
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1]
    gens = read_table(tmp_path / "ds", "generations")
    assert set(gens.loc[gens["round"] == 1, "run"]) == {str(tmp_path / "runs" / "round-0" / "dpok")}
    # every stage sampled without T5 tokens, as the model was made
    cfg = yaml.safe_load((tmp_path / "runs" / "round-1" / "dpok" / "config.yaml").read_text())
    assert cfg["sampling"]["max_sequence_length"] == 0


@pytest.mark.slow
def test_a_loop_can_fine_tune_each_round_by_dpo_on_its_labels(tiny_sd, tmp_path):
    """finetune=dpo: every round and the one-shot control train Diffusion-DPO on the labels (no DPOK),
    round 1 continuing from round 0's run, the control as long as both rounds together."""
    from core.config import load_config
    from finetune.config import FinetuneConfig

    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    args = _args(tiny_sd, clip, tmp_path, "finetune=dpo", "oracle_upper_bound=false",
                 "dpo_args=[sampling.num_inference_steps=2, dpo.steps=2, dpo.batch_size=4, dpo.ties=half, "
                 "dpo.binary_pairs=true]")
    assert run(main, args) == 0
    runs = tmp_path / "runs"
    saved = {k: load_config(FinetuneConfig, runs / f"round-{k}" / "dpo" / "config.yaml") for k in (0, 1)}
    assert {c.method for c in saved.values()} == {"dpo"} and not (runs / "round-0" / "dpok").exists()
    assert saved[0].init is None and saved[1].init == str(runs / "round-0" / "dpo")
    assert saved[1].data.root == str(tmp_path / "ds") and saved[1].prompts.prompts_file == str(runs / "round-1" / "targets.txt")
    gens = read_table(tmp_path / "ds", "generations")
    assert set(gens.loc[gens["round"] == 1, "run"]) == {str(runs / "round-0" / "dpo")}
    one_shot = load_config(FinetuneConfig, runs / "one-shot-2" / "dpo" / "config.yaml")
    assert (one_shot.method, one_shot.dpo.steps, one_shot.data.root) == ("dpo", 4, str(tmp_path / "ds" / "one-shot-2"))
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["round"] for r in res["rounds"]] == [0, 1] and res["one_shot"]["length"] == 4


@pytest.mark.slow
def test_a_label_scarce_optimistic_loop_keeps_its_targets(tiny_sd, tmp_path):
    # issue 59: round 0 labels whole prompts on a budget, round 1's DPOK maximises the reward's UCB,
    # and a target stays until the labels say it is fixed (never, with the band reaching 1.0)
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    # round 1 sends all its 48 images (24 prompts x 2), ranked by uncertainty: its labels then
    # surely share prompts (the targets) with round 0's, so that its round check runs; 8 of them
    # shared a prompt only by chance (a changed random stream left none)
    assert run(main, _args(tiny_sd, clip, tmp_path, "round0_budget=16", "budget=48", "optimism=0.5",
                           "one_shot=false")) == 0
    picked0 = read_table(tmp_path / "ds", "selections", rounds="0")
    assert len(picked0) == 16 and set(picked0["method"]) == {"prompts"}
    gens0 = read_table(tmp_path / "ds", "generations", rounds="0").set_index("image_id")
    assert gens0.loc[picked0["image_id"], "prompt_id"].value_counts().tolist() == [2] * 8  # whole prompts of 2
    assert set(read_table(tmp_path / "ds", "binary_labels", rounds="0")["image_id"]) <= set(picked0["image_id"])
    from finetune.config import FinetuneConfig
    from core.config import load_config
    optimism = [load_config(FinetuneConfig, tmp_path / "runs" / f"round-{k}" / "dpok" / "config.yaml").reward.optimism
                for k in (0, 1)]
    assert optimism == [0.0, 0.5]  # round 0 trains on the mean
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    first, second = (r["targets"] for r in res["rounds"])
    assert set(first) <= set(second) and res["rounds"][1]["dropped"] == []
    assert res["rounds"][1]["kl"] >= 0 and "no_round_falls_back" in res["checks"]
    assert (tmp_path / "report" / "alignment_vs_kl.png").exists()
    # round 1's check (uncertainty picks alone: biased, not acted on) and the model it continued from
    cont = res["rounds"][1]["continued_from"]
    assert cont["model"] == str(tmp_path / "runs" / "round-0" / "dpok") and cont["round"] == 1
    assert res["rounds"][1]["round_check"]["biased_sample"] and "biased" in cont["why"]
    assert "round 1's fine-tuning started from" in (tmp_path / "report" / "report.md").read_text()


def _kill_in_round_0_labels(args, tmp_path, labels=5, timeout=300):
    """Run `make loop` in a process of its own and SIGKILL it once round 0's label stage has
    written ``labels`` label files (in its staging copy, or in the root itself)."""
    repo = Path(__file__).resolve().parents[1]
    for d in ("ds", "runs", "report"):  # no labels of the run before to mistake for the new one's
        shutil.rmtree(tmp_path / d)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.loop", *args], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = [tmp_path / "ds" / ".staging" / "binary_labels", tmp_path / "ds" / "binary_labels"]
    deadline = time.monotonic() + timeout
    try:
        while not any(len(list(d.glob("part-*.parquet"))) >= labels for d in written if d.is_dir()):
            assert proc.poll() is None, "the loop ended before its round-0 labels"
            assert time.monotonic() < deadline, "no round-0 labels in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_bad_loop_input_is_refused_before_anything_is_written(tiny_sd, tmp_path, capsys):
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    assert run(main, _args(tiny_sd, clip, tmp_path, "budget=100000")) == 2
    assert "more than a round can hold" in capsys.readouterr().err
    assert run(main, _args(tiny_sd, clip, tmp_path, "round0_budget=100000")) == 2
    assert "more than round 0 holds" in capsys.readouterr().err
    assert run(main, _args(tiny_sd, clip, tmp_path, "selection=prompts")) == 2
    assert "selection=prompts does not rank" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "runs").exists()
    assert run(main, _args(tiny_sd, clip, tmp_path, "dpok_args=[dpok.no_such_key=1]")) == 2
    assert "no_such_key" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    assert run(main, _args(tiny_sd, clip, tmp_path, "finetune=kto", "kto_args=[kto.no_such_key=1]")) == 2
    assert "no_such_key" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    assert run(main, _args(tiny_sd, clip, tmp_path, "finetune=kto", "optimism=0.5")) == 2
    assert "optimism=0.5 is DPOK's" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    for bad in ("abc", "5", "0,1"):  # round 1's labels do not exist when round 0's reward trains
        assert run(main, _args(tiny_sd, clip, tmp_path, f"reward_rounds={bad}")) == 2
        assert "reward_rounds=" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    precious = tmp_path / "ds"
    precious.mkdir()
    (precious / "keep.txt").write_text("a rater's work")
    assert run(main, _args(tiny_sd, clip, tmp_path)) == 2
    assert "was not made by `make loop`" in capsys.readouterr().err
    assert (precious / "keep.txt").read_text() == "a rater's work"


def test_paired_gain_is_the_mean_per_prompt_difference_with_its_standard_error():
    import math

    from evaluation.loop_report import paired_gain

    base = {"a": 0.25, "b": 0.5, "c": 0.0}
    model = {"a": 0.75, "b": 0.5, "c": 0.5, "z": 1.0}  # z: not evaluated for the base, left out
    gain, se = paired_gain(model, base, ["a", "b", "c"])
    assert gain == (0.5 + 0.0 + 0.5) / 3
    diffs = [0.5, 0.0, 0.5]
    sd = math.sqrt(sum((d - gain) ** 2 for d in diffs) / 2)
    assert math.isclose(se, sd / math.sqrt(3))
    assert math.isnan(paired_gain(model, base, ["a"])[1])  # one prompt: no standard error


def _check(verdict: str, biased: bool = False, against: int = 0) -> dict:
    return {"verdict": verdict, "biased_sample": biased, "against": against, "good_rate": 0.4, "good_rate_se": 0.05,
            "previous_good_rate": 0.6, "previous_good_rate_se": 0.05, "difference": -0.2, "difference_se": 0.07,
            "prompts": 6, "sample": "random share"}


def test_a_round_that_fell_back_is_not_continued_from():
    from workflows.loop import Kept, continue_from

    base = Kept(None, 0, "the base model made round 0's images")
    # round 1's images (round 0's model) fell back: round 1's DPOK starts from the base model, and
    # round 2 is checked against round 0 (the kept model's round)
    kept = continue_from(base, "runs/round-0/dpok", 1, _check("fell back"), keep_best=True)
    assert (kept.model, kept.round) == (None, 0) and "rolled back to the base model" in kept.why
    assert "-20.0 ± 7.0" in kept.why
    kept = continue_from(kept, "runs/round-1/dpok", 2, _check("fell back"), keep_best=True)
    assert (kept.model, kept.round) == (None, 0)
    paid = continue_from(kept, "runs/round-1/dpok", 2, _check("paid"), keep_best=True)
    assert (paid.model, paid.round) == ("runs/round-1/dpok", 2)
    two = Kept("runs/round-0/dpok", 1, "")
    assert continue_from(two, "runs/round-1/dpok", 2, _check("fell back", against=1), True).model == "runs/round-0/dpok"
    # what the loop did before round checks: within noise, a biased sample, keep_best=false, no check
    for check, flag in ((_check("within noise"), True), (_check("fell back", biased=True), True),
                        (_check("fell back"), False), ({"refused": "no labelled prompt in common"}, True)):
        res = continue_from(base, "runs/round-0/dpok", 1, check, keep_best=flag)
        assert (res.model, res.round) == ("runs/round-0/dpok", 1) and "rolled back" not in res.why


def _row(k: int, verdict: str, check: str | None = None, made: int | None = None, biased: bool = False) -> dict:
    """A results.json round: the oracle's verdict on its model against its start (``vs_start``), and
    round k >= 1's label check (``check``) and the round whose images its start model made (``made``)."""
    row = {"round": k, "vs_start": {"verdict": verdict, "gain": 0.0, "gain_se": 0.01}}
    if k:
        row["round_check"] = _check(check or "within noise", biased=biased)
        model = None if made == 0 else f"runs/round-{made - 1}/dpok"
        row["continued_from"] = {"model": model, "round": made, "why": ""}
    return row


def _results(rounds: list[dict]) -> dict:
    """results.json's rounds with the figures checks() reads besides the verdicts."""
    return {"rounds": [{**r, "round0_gain": 0.1, "round0_gain_se": 0.02, "controls_gain": 0.0, "fidelity_vs_base": 0.0,
                        "reward_before": 0.7, "reward_val_images": 0.7} for r in rounds]}


def test_each_round_is_judged_against_the_model_it_started_from_and_the_label_check_against_the_oracle():
    from evaluation.loop_report import check_catches, checks, started_from

    # round 1 continued from round 0's model; round 2 was rolled back to the base model; a round from a
    # loop before round checks (no continued_from) started from the round before it
    assert started_from({"round": 0}) is None
    assert started_from(_row(1, "paid", made=1)) == 0
    assert started_from(_row(2, "paid", made=0)) is None
    assert started_from({"round": 2}) == 1
    # round 0's model paid, round 1's fell back (oracle); round 1's label check (on round 0's model) said
    # fell back: a false alarm; round 2's (on round 1's model) caught the fall
    rounds = [_row(0, "paid"), _row(1, "fell back", "fell back", made=1), _row(2, "within noise", "fell back", made=0)]
    assert check_catches(rounds) == {"checked": 2, "fell_back": 1, "caught": 1, "held": 1, "false_alarms": 1}
    res = checks(_results(rounds))
    assert res["no_round_falls_back"]["holds"] is False  # round 1's model fell back
    assert res["round_check_catches"]["holds"] is False  # one false alarm in one round that held
    # a biased check (uncertainty picks alone) is not counted; with no fall the target is not measured
    rounds = [_row(0, "paid"), _row(1, "paid", "fell back", made=1, biased=True), _row(2, "paid", "paid", made=2)]
    assert check_catches(rounds)["checked"] == 1
    res = checks(_results(rounds))
    assert res["no_round_falls_back"]["holds"] and res["round_check_catches"]["holds"] is None
