"""The frontier and the floor (issue 78): a run's LoRA scaled at load, the frontier's interpolation
and the target test by hand, the ``@scale`` model references and their refusals, and a tiny
evaluation of a run at two scales and two samplers producing the frontier columns."""

import json
import math

import numpy as np
import pytest

from core.errors import UserError
from core.loading import load_model, resolve_model, with_scale
from evaluation.frontier import (FrontierPoint, binomial_se, frontier_at, read_frontier, seeds_for_right_images,
                                 split_scale)
from pipelines.cli import run
from tiny_models import make_tiny_lora_run

# a frontier of three scaled points, each of 100 base-right images (shares; gain +4, +20, +30 points)
POINTS = [FrontierPoint(1.0, 0.30, 0.20, 100), FrontierPoint(0.1, 0.04, 0.10, 100), FrontierPoint(0.5, 0.20, 0.14, 100)]


def test_binomial_se():
    assert binomial_se(0.2, 100) == pytest.approx(0.04)
    assert binomial_se(0.0, 10) == 0.0
    assert math.isnan(binomial_se(0.2, 0)) and math.isnan(binomial_se(math.nan, 10))


def test_frontier_interpolates_between_the_scaled_points_around_the_gain():
    rate, se, between = frontier_at(POINTS, 0.12)  # halfway from scale 0.1 (+4) to 0.5 (+20)
    assert rate == pytest.approx(0.12) and between == (0.1, 0.5)
    assert se == pytest.approx(0.5 * 0.03 + 0.5 * math.sqrt(0.14 * 0.86 / 100))  # the points' SEs, weighted
    rate, se, between = frontier_at(POINTS, 0.25)  # halfway from 0.5 to 1
    assert rate == pytest.approx(0.17) and between == (0.5, 1.0)
    assert frontier_at(POINTS, 0.02)[:2] == (0.10, pytest.approx(0.03))  # below the smallest scale's gain: the floor
    assert frontier_at(POINTS, 0.02)[2] == (0.1, 0.1)
    rate, se, between = frontier_at(POINTS, 0.35)  # more gain than the run at full scale: no frontier there
    assert math.isnan(rate) and math.isnan(se) and between is None
    # gains not monotone in the scale: the first pair (by scale) that brackets the gain
    wobbly = [FrontierPoint(0.1, 0.04, 0.10, 50), FrontierPoint(0.25, 0.20, 0.16, 50),
              FrontierPoint(0.5, 0.15, 0.12, 50), FrontierPoint(1.0, 0.30, 0.20, 50)]
    rate, _, between = frontier_at(wobbly, 0.18)
    assert between == (0.1, 0.25) and rate == pytest.approx(0.10 + 0.06 * 14 / 16)


def test_target_test_by_hand():
    """(broken - floor) <= 1/2 (frontier - floor): at gain +25 the frontier breaks 17 %, the floor 10 %,
    so 13.5 % is the most a model may break."""
    ok = read_frontier(POINTS, 0.25, 0.13, 100)
    assert ok.frontier == pytest.approx(0.17) and ok.floor == 0.10 and ok.floor_scale == 0.1
    assert ok.margin == pytest.approx(0.005) and ok.passes is True
    fse = 0.5 * math.sqrt(0.14 * 0.86 / 100) + 0.5 * 0.04
    assert ok.margin_se == pytest.approx(math.sqrt(0.13 * 0.87 / 100 + 0.25 * fse ** 2 + 0.25 * 0.03 ** 2))
    assert ok.gain_share == pytest.approx(0.25 / 0.30) and ok.meets_target is True  # >= 80 % of the full gain
    bad = read_frontier(POINTS, 0.25, 0.14, 100)
    assert bad.margin == pytest.approx(-0.005) and bad.passes is False and bad.meets_target is False
    low = read_frontier(POINTS, 0.12, 0.10, 100)  # passes, but at 40 % of the full gain: not the target
    assert low.passes is True and low.meets_target is False
    beyond = read_frontier(POINTS, 0.40, 0.05, 100)
    assert beyond.passes is None and beyond.meets_target is None and beyond.between is None


def test_seeds_for_150_right_images():
    assert seeds_for_right_images(75, 8) == 16
    assert seeds_for_right_images(49, 4) == 13  # ceil(150 * 4 / 49)
    assert seeds_for_right_images(150, 8) == 8 and seeds_for_right_images(0, 8) == 0


def test_split_scale(tmp_path):
    assert split_scale("runs/x@0.25", "a") == ("runs/x", 0.25)
    assert split_scale("runs/x", "a") == ("runs/x", None)
    at = tmp_path / "run@v2"
    at.mkdir()
    assert split_scale(str(at), "a") == (str(at), None)  # a folder named with an @ is taken whole
    with pytest.raises(UserError, match="is no scale"):
        split_scale("runs/x@half", "a")


@pytest.fixture(scope="module")
def lora(tiny_sd, tmp_path_factory):
    return make_tiny_lora_run(tiny_sd, tmp_path_factory.mktemp("frontier") / "run")


def test_with_scale_fingerprints_and_refusals(tiny_sd, lora):
    ref = resolve_model(lora)
    half = with_scale(ref, 0.5)
    assert half.scale == 0.5 and half.fingerprint == f"{ref.fingerprint}*0.5" and half.fingerprint != ref.fingerprint
    assert with_scale(ref, 1) == ref  # the run as trained
    for bad in (0, -1, "half", float("nan"), float("inf")):
        with pytest.raises(UserError, match="no positive number"):
            with_scale(ref, bad)
    with pytest.raises(UserError, match="no LoRA or side network to scale"):
        with_scale(resolve_model(tiny_sd), 0.5)


def test_scaled_lora_fuses_that_share_of_the_change(tiny_sd, lora):
    """W + s dW: the fused weights at scale 0.5 sit halfway between the base's and the run's."""
    ref = resolve_model(lora)
    weights = {}
    for s, r in (("base", resolve_model(tiny_sd)), (1.0, ref), (0.5, with_scale(ref, 0.5))):
        unet = load_model(r, device="cpu").unet
        weights[s] = next(p.detach().clone() for n, p in unet.named_parameters() if n.endswith("attn1.to_q.weight"))
    delta = weights[1.0] - weights["base"]
    assert delta.abs().max() > 1e-3
    assert np.allclose((weights[0.5] - weights["base"]).numpy(), 0.5 * delta.numpy(), atol=1e-6)


def _eval_args(tiny_sd, tiny_clip, out, *extra):
    return [f"base={tiny_sd}", f"clip={tiny_clip}", "reward.kind=oracle", "samples_per_prompt=2",
            "sampling.num_inference_steps=2", "split=heldout", "control_split=false", "grid_prompts=2",
            f"output_dir={out}", *extra]


@pytest.mark.parametrize("models", ["[dpok={sd}@0.5]", "[dpok={lora}@0]", "[dpok={lora}@-1]", "[dpok={lora}@half]"],
                         ids=["no-adapter", "zero", "negative", "no-number"])
def test_eval_refuses_a_bad_scale_and_writes_nothing(tiny_sd, tiny_clip, lora, tmp_path, capsys, models):
    from pipelines.evaluate import main

    out = tmp_path / "report"
    assert run(main, _eval_args(tiny_sd, tiny_clip, out, "models=" + models.format(sd=tiny_sd, lora=lora))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # one line, after the sampling line
    assert err.startswith("error: ") and "Fix:" in err and "scale" in err
    assert not out.exists()


def test_eval_refuses_a_frontier_without_two_scales(tiny_sd, tiny_clip, lora, tmp_path, capsys):
    from pipelines.evaluate import main

    out = tmp_path / "report"
    for extra in (["frontier=dpok"], ["frontier=nope", "frontier_scales=[0.5]"], ["models=[mine=" + str(lora) + "]",
                                                                                   "frontier_scales=[0.5]"]):
        args = _eval_args(tiny_sd, tiny_clip, out, f"models=[dpok={lora}]", *extra)
        assert run(main, args) == 2, extra
    assert not out.exists()
    assert "frontier" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_reads_every_model_against_the_frontier_at_two_samplers(tiny_sd, tiny_clip, lora, tmp_path):
    """A run at scales 1, 0.5 and 0.25 (one given as @0.5, one added by frontier_scales) beside another
    model, at the evaluation's eta and at eta 0 on the same seeds: every fine-tuned model gets the
    frontier columns at both samplers, in results.md and metrics.json."""
    from core.config import load_config
    from evaluation.compare import EvalConfig, evaluate

    other = make_tiny_lora_run(tiny_sd, tmp_path / "other", seed=1)
    out = tmp_path / "report"
    cfg = load_config(EvalConfig, None, _eval_args(
        tiny_sd, tiny_clip, out, f"models=[dpok={lora}, half={lora}@0.5, other={other}]", "frontier_scales=[0.25]",
        "keep_etas=[1.0, 0.0]"))
    results = {r.name: r for r in evaluate(cfg)}
    assert list(results) == ["base", "dpok", "half", "other", "dpok@0.25"]
    assert [results[n].scale for n in ("dpok", "half", "dpok@0.25")] == [1.0, 0.5, 0.25]
    assert results["dpok@0.25"].frontier_point and not results["other"].frontier_point
    for name in ("dpok", "half", "other", "dpok@0.25"):
        r = results[name]
        assert set(r.frontier) == {"broken", "broken_changed"} and r.frontier["broken"].floor_scale == 0.25
        assert [sk.eta for sk in r.samplers] == [0.0]  # eta 1 is the evaluation's own, sampled once
        assert set(r.samplers[0].frontier) == {"broken", "broken_changed"}
        assert r.keep.n_base_right == results["dpok"].keep.n_base_right  # the same base images for each
    floor = results["dpok@0.25"]  # the tiny model may draw no right image: NaN shares then, on both sides
    assert np.array_equal([results["other"].frontier["broken"].floor], [floor.keep.broken], equal_nan=True)
    assert np.array_equal([results["other"].samplers[0].frontier["broken_changed"].floor],
                          [floor.samplers[0].keep.broken_changed], equal_nan=True)
    assert results["base"].frontier == {} and results["base"].samplers == []
    md = (out / "results.md").read_text()
    assert "## Keep what is right: the frontier and the floor" in md and "| η = 0 | other |" in md
    assert "Not read against a frontier" not in md
    assert "| η = 1 | dpok@0.25 | 0.25 |" in md and "right target images" in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frontier"] == ["dpok", "half", "dpok@0.25"]
    assert metrics["models"]["other"]["samplers"][0]["frontier"]["broken"]["floor_scale"] == 0.25


def test_demo_report_reads_the_keep_table_against_the_frontier():
    """The demo's report (evaluation.report.markdown) shows the frontier tables when the evaluation
    has a frontier, for both samplers; results.json carries the readings."""
    from dataclasses import replace

    from evaluation.compare import ModelEval, SamplerKeep, read_frontiers
    from evaluation.keep import KeepWhatIsRight
    from evaluation.report import markdown, results_json

    a = {k: 0.5 for k in ("color", "count", "background", "combination", "overall")}

    def keep(broken, changed):
        return KeepWhatIsRight(0.5, broken, 100, 100, 0.1, broken_changed=changed, unchanged=0.5)

    def model(name, scale, gain, broken, eta0_broken):
        return replace(ModelEval(name, a, a, 0.5, 0.01, 200), scale=scale, gain=gain, gain_se=0.02,
                       keep=keep(broken, broken / 2),
                       samplers=[SamplerKeep(0.0, gain, 0.02, keep(eta0_broken, eta0_broken / 2))])

    evals = [ModelEval("base", a, a, 0.5, 0.01, 200), model("dpok", 1.0, 0.30, 0.20, 0.18),
             model("dpok@0.1", 0.1, 0.04, 0.10, 0.08), model("dpok@0.5", 0.5, 0.20, 0.14, 0.12),
             model("region", 1.0, 0.25, 0.13, 0.20)]
    read_frontiers(evals, ["dpok", "dpok@0.1", "dpok@0.5"])
    region = evals[-1]
    assert region.frontier["broken"].passes is True and region.frontier["broken"].margin == pytest.approx(0.005)
    assert region.samplers[0].frontier["broken"].passes is False  # at eta 0: 20 % against 0.5 (0.15 + 0.08)
    assert region.frontier["broken_changed"].floor == 0.05 and not region.frontier_point and evals[1].frontier_point
    results = results_json(evals, {}, {})
    assert results["region"]["frontier"]["broken"]["floor_scale"] == 0.1
    assert results["region"]["samplers"][0]["frontier"]["broken"]["passes"] is False
    md = markdown(results | {"hacking": {}}, evals, [], "")
    assert "| the evaluation's η | region | 1 | +25.0 ± 2.0 | 13.0 ± 3.4 of 100 | 17.0 ± 3.7 (0.5–1) | 10.0 ± 3.0 | " \
           "+0.5 ± 4.1 | pass | 83.3 % | 50.0 |" in md
    assert "| η = 0 | region | 1 |" in md and "| η = 0 | dpok@0.1 | 0.1 |" in md and "frontier point" in md
    assert "| η = 0 | dpok@0.1 | 0.1 | +4.0 ± 2.0 | 8.0 ± 2.7 of 100 | 8.0 ± 2.7 (floor) |" in md
    assert md.count("| sampler | model | scale |") == 2  # every flip, and changed images only
    assert "the frontier run, dpok@0.1 (scale 0.1), dpok@0.5 (scale 0.5), dpok (scale 1), scaled" in md  # named
