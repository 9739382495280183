"""Did a round pay (evaluation.round_check, make round-check): the verdicts and standard errors on
hand-built tables, which images are judged (the random share, the shared prompts, majority per
image), every refusal, and the CLI on a tiny rendered and labelled pair of rounds."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from core.errors import UserError
from data import Store, read_table
from data.labels import retract
from evaluation.round_check import RoundCheckConfig, check_round, round_check
from labeling_app.simulate import simulate_round
from pipelines.cli import run
from pipelines.round_check import main as check_main
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set
from test_reward_rounds import render_into_round


def _round(k: int, goods: dict[str, int], n: int = 10, raters: int = 1):
    """Round ``k``: ``n`` images per prompt, the first goods[prompt] of them labelled good by every
    one of ``raters`` raters, the rest bad."""
    gens, labels = [], []
    for prompt, good in goods.items():
        for i in range(n):
            iid = f"r{k}-{prompt}-{i}"
            gens.append({"image_id": iid, "prompt_id": prompt, "round": k})
            labels += [{"image_id": iid, "rater_id": f"u{j}", "label": "good" if i < good else "bad"} for j in range(raters)]
    return pd.DataFrame(gens), pd.DataFrame(labels)


def _tables(*rounds):
    gens = pd.concat([g for g, _ in rounds], ignore_index=True)
    labels = pd.concat([lab for _, lab in rounds], ignore_index=True)
    return gens, labels


NO_PICKS = pd.DataFrame(columns=["image_id", "method", "uncertainty"])


def test_paid_against_a_hand_computation():
    gens, labels = _tables(_round(0, {"a": 2, "b": 3}), _round(1, {"a": 7, "b": 8}))
    res = round_check(gens, labels, NO_PICKS, 1)
    p, q = 15 / 20, 5 / 20
    se_p, se_q = math.sqrt(p * (1 - p) / 20), math.sqrt(q * (1 - q) / 20)
    assert (res.round, res.against, res.sample, res.biased_sample) == (1, 0, "all images", False)
    assert (res.prompts, res.images, res.previous_images) == (2, 20, 20)
    assert res.good_rate == p and res.previous_good_rate == q
    assert res.good_rate_se == pytest.approx(se_p) and res.previous_good_rate_se == pytest.approx(se_q)
    assert res.difference == pytest.approx(0.5)
    assert res.difference_se == pytest.approx(math.sqrt(se_p ** 2 + se_q ** 2))
    assert res.verdict == "paid"


def test_fell_back_and_within_noise():
    gens, labels = _tables(_round(0, {"a": 7, "b": 8}), _round(1, {"a": 2, "b": 3}))
    assert round_check(gens, labels, NO_PICKS, 1).verdict == "fell back"
    # 10/20 against 9/20: a difference of 0.05, an SE of about 0.16
    gens, labels = _tables(_round(0, {"a": 5, "b": 4}), _round(1, {"a": 5, "b": 5}))
    res = round_check(gens, labels, NO_PICKS, 1)
    assert res.difference == pytest.approx(0.05) and res.difference_se > 0.05 and res.verdict == "within noise"
    res = round_check(gens, labels, NO_PICKS, 0, against=1)  # the other way round, by against=
    assert res.difference == pytest.approx(-0.05) and res.verdict == "within noise"


def test_majority_per_image_ties_and_skips_out():
    gens, labels = _tables(_round(0, {"a": 5}), _round(1, {"a": 5}))
    # r1-a-9 (bad) gains two good votes: 2 good vs 1 bad, now good; r1-a-8 one good: a tie, dropped;
    # r1-a-7 a skip: not a vote
    more = pd.DataFrame([{"image_id": "r1-a-9", "rater_id": "u1", "label": "good"},
                         {"image_id": "r1-a-9", "rater_id": "u2", "label": "good"},
                         {"image_id": "r1-a-8", "rater_id": "u1", "label": "good"},
                         {"image_id": "r1-a-7", "rater_id": "u1", "label": "skip"}])
    res = round_check(gens, pd.concat([labels, more], ignore_index=True), NO_PICKS, 1)
    assert res.images == 9 and res.good_rate == pytest.approx(6 / 9)


def test_the_random_share_on_shared_prompts_alone():
    # round 1: prompt c is new (round 0 never labelled it), and a mix selection whose uncertainty
    # picks are the bad images: only the random picks on a and b are judged
    gens, labels = _tables(_round(0, {"a": 5, "b": 5}), _round(1, {"a": 5, "b": 5, "c": 10}))
    random = [f"r1-{p}-{i}" for p in "abc" for i in range(5)]  # the good ones
    uncertain = [f"r1-{p}-{i}" for p in "ab" for i in range(5, 10)]
    picks = pd.DataFrame({"image_id": random + uncertain, "method": "mix",
                          "uncertainty": [None] * len(random) + [0.4] * len(uncertain)})
    res = round_check(gens, labels, picks, 1)
    assert res.sample == "random share" and not res.biased_sample
    assert (res.prompts, res.images, res.good_rate, res.previous_images) == (2, 10, 1.0, 20)
    # uncertainty picks alone: every labelled image, said to be biased
    only = picks[picks["uncertainty"].notna()].assign(method="uncertain")
    res = round_check(gens, labels[labels["image_id"].isin(only["image_id"]) | labels["image_id"].str.startswith("r0")],
                      only, 1)
    assert res.sample == "all labelled" and res.biased_sample and res.images == 10 and res.good_rate == 0.0


def test_refusals():
    gens, labels = _tables(_round(0, {"a": 5}), _round(1, {"a": 5}))
    with pytest.raises(UserError, match="round 0 has no round before it"):
        round_check(gens, labels, NO_PICKS, 0)
    with pytest.raises(UserError, match="round 1 has no binary labels"):
        round_check(gens, labels[labels["image_id"].str.startswith("r0")], NO_PICKS, 1)
    with pytest.raises(UserError, match="round 0 has no binary labels"):
        round_check(gens, labels[labels["image_id"].str.startswith("r1")], NO_PICKS, 1)
    gens, labels = _tables(_round(0, {"a": 5}), _round(1, {"b": 5}))
    with pytest.raises(UserError, match="no labelled prompt in common"):
        round_check(gens, labels, NO_PICKS, 1)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Round 0: 6 train prompts x 4 renders, half of them off the prompt; round 1: the same prompts
    x 4, none off (a better model), and 2 prompts round 0 never had; both labelled by 3 simulated
    raters (10 % noise)."""
    root = tmp_path_factory.mktemp("roundcheck")
    store = Store(root)
    train = prompt_set("train")
    render_round(store, train[::7][:6], per_prompt=4, seed=1, mismatch_rate=0.5)
    render_into_round(store, train[::7][:6] + train[3::7][:2], per_prompt=4, round=1, seed=2, mismatch_rate=0.0)
    for r in (0, 1):
        simulate_round(store, default_panel(3, flip_rate=0.1), overlap=2, round=r)
    return root


def _by_hand(root, k: int, prompts: set[str]) -> tuple[float, int]:
    labels = read_table(root, "binary_labels")
    gens = read_table(root, "generations").set_index("image_id")
    votes = labels[(labels["label"] != "skip") & labels["image_id"].map(gens["round"]).eq(k)]
    per = votes.assign(good=votes["label"] == "good").groupby("image_id")["good"].agg(["sum", "count"])
    per = per[(2 * per["sum"] != per["count"]) & per.index.map(gens["prompt_id"]).isin(prompts)]
    return float((2 * per["sum"] > per["count"]).mean()), len(per)


def test_cli_on_a_labelled_round(labelled, capsys):
    root = labelled
    assert run(check_main, [f"root={root}"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    shared = set(read_table(root, "generations", rounds="0")["prompt_id"])
    rate, n = _by_hand(root, 1, shared)
    assert out["round"] == 1 and out["against"] == 0 and out["prompts"] == 6 and out["sample"] == "all images"
    assert out["images"] == n and out["good_rate"] == pytest.approx(rate, abs=1e-4)
    assert out["previous_good_rate"] == pytest.approx(_by_hand(root, 0, shared)[0], abs=1e-4)
    assert out["verdict"] == "paid" and "paid" in captured.err
    # an answer taken back (undo) is out, as make reward reads it
    labels = read_table(root, "binary_labels", rounds="1")
    row = labels.iloc[0]
    retract(Store(root), "binary_labels", row["label_id"], row["rater_id"])
    res = check_round(RoundCheckConfig(root=str(root)))
    assert (res.good_rate, res.images) == pytest.approx(_by_hand(root, 1, shared))
    assert run(check_main, [f"root={root}", "round=0"]) == 2
    assert "no round before it" in capsys.readouterr().err
    assert run(check_main, [f"root={root}", "round=5"]) == 2
