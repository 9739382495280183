"""Does a reward keep up with a newer round (evaluation.keeps_up, make reward-check): the AUC's standard
error against a simulation, the figures against a hand computation on a real (tiny) reward and
simulated raters, which of the round's images are judged, and every refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from collect.selection import SelectConfig, select
from core.config import load_config
from core.errors import UserError
from data import Store, read_table
from data.generations import load_image
from evaluation.keeps_up import KeepsUpConfig, auc_standard_error, check_keeps_up
from labeling_app.simulate import simulate_round
from pipelines.cli import run
from pipelines.reward_check import main as check_main
from reward.model import RewardModel
from shapes.raters import default_panel
from shapes.world import prompt_set
from test_reward_rounds import render_into_round
from test_selection import labelled_round_and_reward

torch.set_num_threads(2)


@pytest.mark.slow
def test_auc_standard_error_matches_a_simulation():
    """Hanley & McNeil's SE against the spread of AUCs over 2000 simulated samples (binormal scores,
    true AUC about 0.84): within 15 %, and it shrinks with the sample."""
    rng = np.random.default_rng(0)
    n_pos, n_neg = 30, 50
    aucs = []
    for _ in range(2000):
        s = np.concatenate([rng.normal(1.4, 1, n_pos), rng.normal(0, 1, n_neg)])
        aucs.append(roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_neg)], s))
    se = auc_standard_error(float(np.mean(aucs)), n_pos, n_neg)
    assert se == pytest.approx(float(np.std(aucs)), rel=0.15)
    assert auc_standard_error(0.84, 4 * n_pos, 4 * n_neg) < se / 1.8
    assert np.isnan(auc_standard_error(0.8, 0, 10))


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A labelled round 0 and a reward trained on it; round 1 (other prompts) with a mixed
    selection of 24 of its 40 images, labelled."""
    root, reward = labelled_round_and_reward(tmp_path_factory.mktemp("keeps"))
    store = Store(root)
    render_into_round(store, prompt_set("train")[5::9][:10], per_prompt=4, round=1, seed=3)
    select(load_config(SelectConfig, None, [f"root={root}", f"reward={reward}", "round=1", "budget=24",
                                            "method=mix", "device=cpu", "progress=false"]))
    simulate_round(store, default_panel(4, flip_rate=0.1), overlap=2, round=1)
    return root, reward


def _cfg(root, reward, *more):
    return load_config(KeepsUpConfig, None, [f"root={root}", f"reward={reward}", "device=cpu", *more])


def _by_hand(root, reward, ids: set[str]) -> float:
    """The reward's AUC against the majority labels of round 1's images in ``ids``."""
    labels = read_table(root, "binary_labels", rounds="1")
    votes = labels[labels["label"] != "skip"].assign(good=lambda d: d["label"] == "good")
    per = votes.groupby("image_id")["good"].agg(["sum", "count"])
    per = per[(2 * per["sum"] != per["count"]) & per.index.isin(ids)]
    gens = read_table(root, "generations").set_index("image_id", drop=False).loc[per.index]
    rm = RewardModel.from_pretrained(reward, device="cpu")
    p = rm.score([load_image(root, r) for _, r in gens.iterrows()], gens["prompt"].tolist()).numpy()
    return float(roc_auc_score(2 * per["sum"] > per["count"], p))


def test_figures_on_the_random_picks_against_a_hand_computation(rounds):
    root, reward = rounds
    res = check_keeps_up(_cfg(root, reward, "min_images=5"))
    picks = read_table(root, "selections", rounds="1")
    random_ids = set(picks.loc[picks["uncertainty"].isna(), "image_id"])
    assert res.round == 1 and res.sample == "random picks" and not res.biased_sample
    assert 5 <= res.labelled_images <= len(random_ids)
    assert res.binary_auc == pytest.approx(_by_hand(root, reward, random_ids))
    ref = json.loads((reward / "metrics.json").read_text())["val_images"]
    assert res.reference["binary_auc"] == ref["binary_auc"]
    assert res.keeps_up == (res.binary_auc >= ref["binary_auc"] - 0.03)
    assert 0 < res.binary_auc_se < 0.5


def test_too_few_random_picks_judge_every_labelled_image_and_say_so(rounds):
    root, reward = rounds
    res = check_keeps_up(_cfg(root, reward, "min_images=100"))
    assert res.sample == "all labelled" and res.biased_sample
    labelled = set(read_table(root, "binary_labels", rounds="1")["image_id"])
    assert res.binary_auc == pytest.approx(_by_hand(root, reward, labelled))
    assert res.label_pairs > 0 and 0 <= res.pairwise_accuracy_vs_labels <= 1


def test_refusals(rounds, tmp_path):
    root, reward = rounds
    with pytest.raises(UserError, match="trained on round 0's labels"):
        check_keeps_up(_cfg(root, reward, "round=0"))
    bare = tmp_path / "reward"
    shutil.copytree(reward, bare)
    (bare / "metrics.json").unlink()
    with pytest.raises(UserError, match="no metrics.json"):
        check_keeps_up(_cfg(root, bare))
    unlabelled = tmp_path / "root"
    shutil.copytree(root, unlabelled)
    render_into_round(Store(unlabelled), prompt_set("train")[7::9][:3], per_prompt=4, round=2, seed=5)
    with pytest.raises(UserError, match="round 2 .* has no binary labels yet"):
        check_keeps_up(_cfg(unlabelled, reward))
    with pytest.raises(UserError, match=r"round\(s\) \[5\] have no images"):
        check_keeps_up(_cfg(root, reward, "round=5"))


def test_cli_prints_json(rounds, capsys):
    root, reward = rounds
    assert run(check_main, [f"root={root}", f"reward={reward}", "device=cpu", "min_images=5"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["round"] == 1 and out["sample"] == "random picks" and "keeps up" in captured.err
    assert run(check_main, [f"root={root}", f"reward={reward}", "device=cpu", "round=0"]) == 2
