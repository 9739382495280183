"""The reward across rounds of the closed loop: data.rounds filters the labels it trains on,
metrics.json reports the oracle pair accuracy per round, and round_accuracy measures a trained
reward on a round it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from data import Store
from data.generations import save_images
from labeling_app.simulate import simulate_round
from reward.config import RewardConfig
from reward.data import load_reward_data
from reward.evaluation import round_accuracy, round_pair_metrics
from shapes.raters import default_panel
from shapes.render import RENDERER, render, render_round
from shapes.world import perturb, prompt_set
from tiny_models import tiny_reward_config

torch.set_num_threads(2)


def render_into_round(store, prompts, per_prompt: int, round: int, seed: int, mismatch_rate: float = 0.5):
    """Like shapes.render.render_round, into round ``round`` (a later round of the loop)."""
    rng = np.random.default_rng(seed)
    images, s = [], []
    for p in prompts:
        for i in range(per_prompt):
            shown = perturb(p, p.specified[int(rng.integers(len(p.specified)))], rng) if rng.random() < mismatch_rate else p
            images.append(render(shown, 1000 * seed + i))
            s.append(1000 * seed + i)
    texts = [p.text for p in prompts for _ in range(per_prompt)]
    return save_images(store, images, prompts=texts, prompt_ids=[p.prompt_id for p in prompts for _ in range(per_prompt)],
                       categories=[p.category for p in prompts for _ in range(per_prompt)], seeds=s,
                       model_id="shapes-renderer", settings=RENDERER, round=round)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """Round 0: 12 train + 6 held-out prompts x 4 renders; round 1: 8 other train prompts x 4; all
    labelled by 5 simulated raters (10 % noise)."""
    root = tmp_path_factory.mktemp("loop")
    store = Store(root)
    train = prompt_set("train")
    render_round(store, train[::7][:12] + prompt_set("heldout")[::6][:6], per_prompt=4, seed=1, mismatch_rate=0.5)
    render_into_round(store, train[3::7][:8], per_prompt=4, round=1, seed=2)
    for r in (0, 1):  # the app serves one round at a time
        simulate_round(store, default_panel(5, flip_rate=0.1), overlap=2, round=r)
    return root


def _cfg(root, clip, out, *more):
    return tiny_reward_config(root, clip, out, "train.epochs=2", "train.batch_size=64", "train.ablate_aux=false",
                              "train.baselines=false", *more)


@pytest.mark.slow
def test_rounds_spec_filters_the_labels_it_trains_on(two_rounds):
    cfg = load_config(RewardConfig, None, [f"data.root={two_rounds}"])
    everything = load_reward_data(Store(two_rounds), cfg.data, cfg.loss)
    assert sorted(set(everything.images["round"])) == [0, 1] and "rounds" not in everything.summary
    for spec in ("0", "last:1"):
        c = load_config(RewardConfig, None, [f"data.root={two_rounds}", f"data.rounds={spec}"])
        d = load_reward_data(Store(two_rounds), c.data, c.loss)
        want = 0 if spec == "0" else 1
        assert set(d.images["round"]) == {want} and d.summary["rounds"] == [want]
        assert d.summary["binary_labels"] < everything.summary["binary_labels"]
        assert d.summary["rankings"] < everything.summary["rankings"]
    with pytest.raises(UserError, match=r"round\(s\) \[3\] have no images"):
        c = load_config(RewardConfig, None, [f"data.root={two_rounds}", "data.rounds=0,3"])
        load_reward_data(Store(two_rounds), c.data, c.loss)


def test_metrics_by_round_and_round_accuracy_on_an_untrained_round(two_rounds, tiny_clip, tmp_path):
    from reward.train import train_reward

    both = train_reward(_cfg(two_rounds, tiny_clip, tmp_path / "both"))
    m = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert set(m["by_round"]) == {"0", "1"} == set(both.metrics["by_round"])
    for r in ("0", "1"):
        row = m["by_round"][r]
        assert row["n_images"] > 0 and row["n_pairs"] > 0 and 0.0 <= row["oracle_pair_accuracy"] <= 1.0
    # round 0's validation images: the held-out prompts' and a quarter of each train prompt's
    assert m["by_round"]["0"]["n_images"] == 6 * 4 + 12 * 1

    only0 = train_reward(_cfg(two_rounds, tiny_clip, tmp_path / "r0", "data.rounds=0"))
    assert set(only0.metrics["by_round"]) == {"0"}
    assert only0.metrics["data"]["rounds"] == [0]
    res = round_accuracy(tmp_path / "r0", two_rounds, 1, device="cpu")
    assert res["round"] == 1 and res["n_images"] == 8 * 4 and res["reward_model"] == only0.model.model_id
    assert res["n_pairs"] > 0 and 0.0 <= res["oracle_pair_accuracy"] <= 1.0
    # the in-memory model gives the same figure as its folder
    assert round_accuracy(only0.model, two_rounds, 1)["oracle_pair_accuracy"] == pytest.approx(res["oracle_pair_accuracy"])
    with pytest.raises(UserError, match="have no images"):
        round_accuracy(only0.model, two_rounds, 4)


def test_round_pair_metrics_by_hand():
    oracle = np.array([1.0, 0.5, 0.0, 1.0, 1.0, np.nan])
    prompt = np.array(["a", "a", "a", "b", "b", "b"])
    images = np.arange(6)
    agree = round_pair_metrics(oracle.copy(), images, prompt, oracle)
    # prompt a: 3 ordered pairs; prompt b: a tie (excluded); image 5 has no oracle score
    assert agree["n_pairs"] == 3 and agree["n_images"] == 5 and agree["oracle_pair_accuracy"] == 1.0
    reversed_ = round_pair_metrics(-np.nan_to_num(oracle), images, prompt, oracle)
    assert reversed_["oracle_pair_accuracy"] == 0.0
    flat = round_pair_metrics(np.zeros(6), images, prompt, oracle)
    assert flat["oracle_pair_accuracy"] == 0.5  # equal rewards count half
