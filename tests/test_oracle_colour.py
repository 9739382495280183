"""The strict colour verdict (shapes.oracle, shapes.colorspace, shapes.hue_sweep), its hacking alarm,
and make oracle-check's thresholds on the colour verdict."""

import json

import numpy as np
import pytest

from evaluation.compare import ModelEval, off_palette_alarms
from evaluation.report import hacking_check
from tools.oracle_check import recolored, rgb_snapping_aligned
from shapes.colorspace import hue_difference, lab_to_lch, lab_to_srgb, lch_to_srgb, srgb_to_lab
from shapes.hue_sweep import neighbours, person_name, sweep_steps, zone
from shapes.oracle import judge, name_color, off_palette_share
from shapes.raters import RaterProfile, SimulatedRater
from shapes.render import degrade, render
from shapes.world import COLORS, Prompt

ORANGE, TEAL, VIOLET = (240, 150, 30), (30, 160, 150), (150, 60, 220)


def test_cielab_of_known_colours():
    np.testing.assert_allclose(srgb_to_lab([255, 255, 255]), [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab([255, 0, 0]), [53.24, 80.09, 67.20], atol=0.05)  # the standard figure
    rgb = np.array([[240, 150, 30], [10, 200, 90], [128, 128, 128]], dtype=float)
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-6)
    assert abs(lab_to_lch(srgb_to_lab([255, 0, 0]))[2] - 40.0) < 0.1
    assert hue_difference(5.0, 355.0) == pytest.approx(10.0) and hue_difference(355.0, 5.0) == pytest.approx(-10.0)


def test_lch_to_srgb_keeps_hue_out_of_gamut():
    rgb = lch_to_srgb(60.0, 150.0, 200.0)  # far outside sRGB: chroma is lowered, hue kept
    assert abs(hue_difference(lab_to_lch(srgb_to_lab(np.array(rgb, float)))[2], 200.0)) < 2.0


def test_palette_colours_name_themselves_and_neighbours_do_not():
    for c, rgb in COLORS.items():
        assert name_color(rgb) == c
    for rgb in (ORANGE, TEAL, VIOLET, (128, 128, 128), (120, 100, 20)):  # ..., grey, olive
        assert name_color(rgb) is None, rgb


def test_orange_for_yellow_is_off_palette_though_rgb_snapping_accepts_it():
    p = Prompt.parse("two yellow circles on a white background")
    v = judge(recolored(p, 3, ORANGE, 64), p)
    assert not v.aligned and v.color is False and v.n_off_palette == 2 and v.count
    assert all(b.nearest == "yellow" and b.color is None for b in v.blobs)
    assert rgb_snapping_aligned(v, p)  # the previous oracle's verdict: fooled
    ok = judge(render(p, 3), p)
    assert ok.aligned and ok.n_off_palette == 0 and rgb_snapping_aligned(ok, p)


def test_teal_for_green_and_violet_for_blue_are_rejected():
    for text, rgb in (("one green square", TEAL), ("three blue circles on a gray background", VIOLET)):
        p = Prompt.parse(text)
        assert judge(recolored(p, 5, rgb, 64), p).color is False


def test_blurred_noisy_correct_colours_pass():
    rng = np.random.default_rng(0)
    for c in COLORS:
        p = Prompt(2, "square", c, "black")
        for seed in range(10):
            v = judge(degrade(np.asarray(render(p, seed)), rng, blur_sigma=1.2, noise_sigma=15.0), p)
            assert v.color and v.n_off_palette == 0, (c, seed)


def test_off_palette_share():
    p = Prompt.parse("two yellow circles")
    vs = [judge(recolored(p, 1, ORANGE, 64), p), judge(render(p, 1), p)]
    assert off_palette_share(vs) == pytest.approx(0.5)
    assert np.isnan(off_palette_share([]))


def test_person_names_and_zones():
    assert person_name(93.6) == "yellow" and person_name(69.6) == "orange" and person_name(196) == "teal"
    assert person_name(350) == "pink" and person_name(5) == "pink" and person_name(320) == "purple"
    assert zone("yellow", 93.6, 0.0) == "correct"
    assert zone("yellow", 80.0, 13.6) == "borderline"  # 2 degrees from the yellow / orange border
    assert zone("yellow", 70.0, 23.6) == "other name" and zone("yellow", 100.0, 6.4) == "same name"


def test_sweep_walks_to_each_neighbour_through_the_colour_between():
    assert neighbours()["yellow"] == ("red", "green") and neighbours()["blue"] == ("green", "red")
    steps = sweep_steps(5.0)
    for c in COLORS:
        own = [s for s in steps if s.color == c and s.shift == 0]
        assert len(own) == 1 and own[0].rgb == COLORS[c] and own[0].zone == "correct"
    between = {(c, t): {s.person for s in steps if s.color == c and s.towards == t}
               for c, t in (("yellow", "red"), ("green", "blue"), ("blue", "red"))}
    assert "orange" in between[("yellow", "red")] and "teal" in between[("green", "blue")]
    assert "purple" in between[("blue", "red")]
    last = [s for s in steps if s.color == "yellow" and s.towards == "red"][-1]
    red_hue = lab_to_lch(srgb_to_lab(np.array(COLORS["red"], float)))[2]
    assert last.person == "red" and 0 <= hue_difference(last.hue, red_hue) < 5.0


def test_noiseless_rater_rejects_orange_for_yellow():
    p = Prompt.parse("one yellow circle")
    rater = SimulatedRater(RaterProfile("r", flip_rate=0, skip_rate=0))
    assert rater.binary(recolored(p, 2, ORANGE, 64), p).label == "bad"
    assert rater.binary(render(p, 2), p).label == "good"


def _ev(name, off_targets):
    a = {"color": 0.9, "count": 0.5, "background": 0.95, "combination": 0.4, "overall": 0.4}
    return ModelEval(name, a, dict(a), 0.5, 0.01, 100, off_palette={"targets": off_targets, "controls": 0.01})


def test_hacking_alarm_flags_a_rise_in_off_palette_objects():
    evals = [_ev("base", 0.02), _ev("dpok", 0.09), _ev("rwl", 0.03)]
    alarms = off_palette_alarms(evals)
    assert len(alarms) == 1 and alarms[0].startswith("dpok:") and "+7.0 points" in alarms[0]
    h = hacking_check(evals)
    assert h["dpok"]["off_palette_gain"]["targets"] == pytest.approx(0.07)
    assert any("off palette" in f for f in h["dpok"]["findings"]) and h["rwl"]["findings"] == []
    assert off_palette_alarms([_ev("base", float("nan")), _ev("dpok", 0.5)]) == []


@pytest.mark.slow
def test_oracle_check_meets_the_colour_targets(capsys):
    """make oracle-check, smaller: correct colours (clean, blurred, VAE round trip) >= 99 %
    accepted, hue steps a person names differently <= 2 %, agreement with the previous oracle on
    base-model samples >= 95 %."""
    from pipelines.cli import run
    from pipelines.oracle_check import main

    assert run(main, ["n_images=40", "correct_per_variant=100", "sweep_per_step=8",
                      "agreement_samples_per_prompt=1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert min(min(d.values()) for d in result["correct_accept_by_color"].values()) >= 0.99
    assert result["other_name_accept_rate"] <= 0.02
    assert result["agreement"]["n_images"] == 160 and result["agreement"]["agree"] >= 0.95
    assert any("| yellow | red | 25 |" in line and "| orange | other name |" in line for line in out)
    assert result["targets_met"]
