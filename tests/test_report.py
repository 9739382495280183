import json
import math

from evaluation.compare import ModelEval
from evaluation.report import hacking_check, results_json, write


def ev(name, overall, count, reward, ctrl):
    a = {"color": 0.9, "count": count, "background": 0.95, "combination": overall, "overall": overall}
    c = {"color": 0.9, "count": 0.9, "background": 0.9, "combination": ctrl, "overall": ctrl}
    return ModelEval(name, a, c, reward, 0.01, 100)


def test_hacking_check_names_reward_up_oracle_down():
    evals = [ev("base", 0.30, 0.40, 0.50, 0.80), ev("dpok", 0.45, 0.55, 0.70, 0.70), ev("rwl", 0.33, 0.42, 0.55, 0.80)]
    h = hacking_check(evals)
    assert abs(h["dpok"]["oracle_gain"]["overall"] - 0.15) < 1e-9
    assert any("control prompts" in f and "fell by 10.0 points" in f for f in h["dpok"]["findings"])
    assert h["rwl"]["findings"] == []


def test_report_files(tmp_path):
    from PIL import Image

    evals = [ev("base", 0.3, 0.4, 0.5, 0.8), ev("dpok", 0.5, 0.6, 0.7, 0.8)]
    grids = {}
    for e in evals:
        grids[e.name] = tmp_path / f"{e.name}.png"
        Image.new("RGB", (20, 40), (255, 0, 0)).save(grids[e.name])
    histories = {"dpok": [{"round": 1, "reward_mean": 0.5, "kl": 0.0}, {"round": 2, "reward_mean": 0.6, "kl": 0.01}],
                 "rwl": [{"step": i, "loss_model": 1.0 / i, "loss_pre": 0.5} for i in range(1, 30)]}
    results = results_json(evals, {"val_images": {"pairwise_accuracy_vs_oracle": 0.93}}, {"reward": 12.0})
    results["curves"] = {"dpok": [{"round": r, "oracle_aligned": v, "images": 64}
                                  for r, v in ((0, 0.3), (10, 0.5), (20, 0.375))]}
    write(tmp_path / "r", results, evals, histories, grids, "one circle")
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["dpok"]["targets"]["overall"] == 0.5 and data["dpok"]["controls"]["overall"] == 0.8
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| dpok | 90.0 | 60.0 |" in md and "no sign of reward hacking" in md
    assert "- dpok: best 50.0 % at round 10, last 37.5 %; largest later fall 12.5 points (round 20); " \
           "one SE 6.2 points: falls back" in md
    for f in ("learning_curves.png", "samples_before_after.png", "report.html"):
        assert (tmp_path / "r" / f).exists()


def test_image_paired_gain_is_stratified_by_prompt():
    from evaluation.compare import image_paired_gain

    texts = ["a"] * 4 + ["b"] * 4
    base = [False, False, True, False, True, True, False, True]
    model = [True, False, True, True, True, True, True, True]
    gain, se = image_paired_gain(model, base, texts)
    # differences a: 1 0 0 1, b: 0 0 1 0 -> prompt means 0.5 and 0.25
    assert abs(gain - 0.375) < 1e-12
    var_a, var_b = 1 / 3, 0.25  # sample variances (ddof 1) of the two prompts' differences
    assert abs(se - ((var_a / 4 + var_b / 4) / 4) ** 0.5) < 1e-12
    # the same images with no difference: no gain, no spread
    assert image_paired_gain(base, base, texts) == (0.0, 0.0)
    # one image per prompt leaves no within-prompt variance to estimate
    assert math.isnan(image_paired_gain([True, False], [False, False], ["a", "b"])[1])


def test_report_gives_the_gain_and_its_standard_error(tmp_path):
    from dataclasses import replace

    base = replace(ev("base", 0.25, 0.4, 0.5, 0.8), aligned=[True, False, False, False] * 2)
    dpok = replace(ev("dpok", 0.625, 0.6, 0.7, 0.8), aligned=[True, True, False, True] * 2, gain=0.375, gain_se=0.1)
    results = results_json([base, dpok], {}, {})
    assert results["dpok"]["gain"] == 0.375 and results["dpok"]["gain_se"] == 0.1 and "gain" not in results["base"]
    from evaluation.report import markdown

    assert "dpok +37.5 ± 10.0" in markdown(results | {"hacking": {}}, [base, dpok], [], "")


def test_the_loop_reward_check_fails_on_a_fall_not_on_a_rise():
    from evaluation.loop_report import _keeps_up

    assert _keeps_up([0.76, 0.80], 0.765) is True  # a better reward on new images is no failure
    assert _keeps_up([0.68, 0.81], 0.744) is False  # 6 points below round 0: a failure, not "not measured"
    assert _keeps_up([float("nan")], 0.7) is None
