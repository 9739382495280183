import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from data import Store
from data.pairs import rankings_to_pairs
from data.schemas import validate_ranks
from labeling_app.simulate import simulate_round
from shapes.oracle import judge
from shapes.raters import RaterProfile, SimulatedRater, default_panel, dense_ranks
from shapes.render import render, render_round
from shapes.world import Prompt, perturb, prompt_set


def items(n=200, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = prompt_set("train")[i % 100]
        shown = perturb(p, "count", rng) if i % 2 else p
        out.append((render(shown, i), p))
    return out


def agreement(rater, data):
    answers = [rater.binary(img, p).label for img, p in data]
    truth = ["good" if judge(img, p).aligned else "bad" for img, p in data]
    kept = [(a, t) for a, t in zip(answers, truth) if a != "skip"]
    return np.mean([a == t for a, t in kept]), answers.count("skip") / len(answers)


def test_noiseless_rater_is_the_oracle():
    acc, skips = agreement(SimulatedRater(RaterProfile("r", flip_rate=0, skip_rate=0)), items())
    assert acc == 1.0 and skips == 0


def test_flip_rate_and_skip_rate_are_honoured():
    acc, skips = agreement(SimulatedRater(RaterProfile("r", flip_rate=0.2, skip_rate=0.1)), items(400))
    assert 0.72 < acc < 0.88
    assert 0.05 < skips < 0.16


def test_bias_makes_a_lenient_rater():
    data = items()
    answers = [SimulatedRater(RaterProfile("r", flip_rate=0, bias=0.5, skip_rate=0)).binary(i, p).label
               for i, p in data]
    assert answers.count("good") / len(answers) > 0.65  # half the images are truly bad


def test_bad_profiles_are_refused():
    with pytest.raises(UserError, match="flip_rate"):
        RaterProfile("r", flip_rate=1.5)
    with pytest.raises(UserError, match=r"rater r: bias=-2.0 must be in \[-1, 1\]"):
        RaterProfile("r", bias=-2)
    with pytest.raises(UserError, match="rank_noise=-0.1 must be >= 0"):
        RaterProfile("r", rank_noise=-0.1)


def test_dense_ranks_with_ties():
    assert dense_ranks(np.array([0.1, 0.9, 0.95, 0.5]), tie_width=0.25) == [3, 1, 1, 2]
    assert dense_ranks(np.array([3.0, 1.0, 2.0]), tie_width=0) == [1, 3, 2]


def test_noiseless_ranking_puts_aligned_images_first():
    p = Prompt.parse("three red circles on a white background")
    rng = np.random.default_rng(0)
    imgs = [render(p, 0), render(perturb(p, "count", rng), 1), render(perturb(p, "color", rng), 2)]
    rater = SimulatedRater(RaterProfile("r", rank_noise=0.0, tie_width=0.01))
    ranks = rater.rank(imgs, p).ranks
    assert validate_ranks(ranks, 3) == ranks and ranks[0] == 1 and min(ranks[1:]) > 1


def test_simulated_round_through_the_store(tmp_path):
    store = Store(tmp_path)
    render_round(store, prompt_set("train")[:12], per_prompt=3, seed=1, mismatch_rate=0.4)
    summary = simulate_round(store, default_panel(4, flip_rate=0.1), overlap=2, seed=3)
    labels = store.to_pandas("binary_labels")
    rankings = store.to_pandas("rankings")
    assert summary.binary_labels == len(labels) and summary.rankings == len(rankings) == 12 * 2
    assert sum(summary.labels_by_rater.values()) == len(labels) + len(rankings)
    # every image got exactly two answers that are not skips, from distinct raters; a skip sent
    # the image to one more rater
    answered = labels[labels["label"] != "skip"]
    assert len(answered) == 36 * 2 and len(labels) == 72 + (labels["label"] == "skip").sum()
    assert (answered.groupby("image_id")["rater_id"].nunique() == 2).all()
    assert not labels.duplicated(["image_id", "rater_id"]).any()
    assert (rankings.groupby("prompt_id")["rater_id"].nunique() == 2).all()
    # raters take turns in a random order, so the pairs sharing items vary
    pairs_of_raters = answered.groupby("image_id")["rater_id"].apply(lambda r: tuple(sorted(r)))
    assert pairs_of_raters.nunique() >= 4
    pairs = rankings_to_pairs(store.read("rankings"))
    assert pairs.num_rows == 24 * 3  # three pairs per ranking of three images
    assert set(pairs["label_0"].to_pylist()) <= {0.0, 0.5, 1.0}
    with pytest.raises(UserError, match="overlap 5"):
        simulate_round(store, default_panel(4), overlap=5)


def test_a_simulated_round_judges_each_image_once(tmp_path, monkeypatch):
    """Its raters share the oracle's verdict on an image (judging is deterministic), and answer as
    raters judging it themselves do (a noiseless panel: exactly the oracle's verdicts)."""
    import labeling_app.simulate as simulate_module

    calls = []
    monkeypatch.setattr(simulate_module, "judge", lambda image, p: calls.append(p) or judge(image, p))
    store = Store(tmp_path)
    render_round(store, prompt_set("train")[:6], per_prompt=3, seed=1, mismatch_rate=0.4)
    panel = [RaterProfile(f"r{i}", flip_rate=0, bias=0, skip_rate=0) for i in range(3)]
    simulate_round(store, panel, overlap=2, seed=3)
    assert len(calls) == 18  # 6 prompts x 3 images, each judged once for its binary and ranking answers
    labels = store.to_pandas("binary_labels").merge(store.to_pandas("generations"), on="image_id")
    truth = [judge(Image.open(store.root / "images" / f"{i}.png"), Prompt.parse(t)).aligned
             for i, t in zip(labels["image_id"], labels["prompt"])]
    assert len(labels) == 36 and list(labels["label"]) == ["good" if ok else "bad" for ok in truth]


def test_simulated_round_with_gold_items(tmp_path):
    store = Store(tmp_path)
    render_round(store, prompt_set("train")[:10], per_prompt=4, seed=2, mismatch_rate=0.5)
    summary = simulate_round(store, default_panel(3, flip_rate=0.0), overlap=1, ranking=False,
                             seed=1, gold_share=0.2)
    labels = store.to_pandas("binary_labels")
    gold = store.to_pandas("gold")
    assert len(gold) == 8 and set(gold["answer"]) == {"good", "bad"}
    assert summary.gold_labels == labels["is_gold"].sum() > 0
    assert set(labels.loc[labels["is_gold"], "image_id"]) <= set(gold["image_id"])
    # gold items are outside the overlap: the other 32 images got one non-skip answer each
    normal = labels[~labels["is_gold"] & (labels["label"] != "skip")]
    assert len(normal) == 32 and normal["image_id"].is_unique
