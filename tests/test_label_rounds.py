"""Rounds in the labeling app (issue 43): the assigner serves one round, and of it only the
selected images when the round has selections rows; simulated raters go through the same
assignment, so they label only those; gold is drawn from them; the admin tab counts per round."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from core.errors import UserError
from data import read_table
from data.schemas import SELECTIONS
from data.store import Store
from labeling_app.assignment import Assigner
from labeling_app.config import GoldConfig, LabelConfig
from collect.generate import GenerateConfig, generate
from labeling_app.simulate import SimulateConfig, simulate, simulate_round
from labeling_app.stats import ROUND_COLUMNS, round_counts
from shapes.raters import RaterProfile


@pytest.fixture
def loop_root(tmp_path):
    """Round 0: 3 prompts x 2 renders; round 1: the same prompts x 3 renders, of which the
    selections table picks 2 images of the first prompt and 1 of the second (none of the third)."""
    root = tmp_path / "loop"
    for rnd, n in ((0, 2), (1, 3)):
        generate(GenerateConfig(root=str(root), source="renderer", prompts="train", max_prompts=3, per_prompt=n,
                                round=rnd, seed=rnd))
    store = Store(root)
    gens = store.to_pandas("generations")
    one = gens[gens["round"] == 1].sort_values(["prompt_id", "seed"])
    first, second = sorted(one["prompt_id"].unique())[:2]
    picked = (list(one[one["prompt_id"] == first]["image_id"][:2])
              + list(one[one["prompt_id"] == second]["image_id"][:1]))
    now = datetime.now(timezone.utc)
    store.append(SELECTIONS, [dict(image_id=i, round=1, method="random", uncertainty=None, reward_model=None,
                                   created_at=now) for i in picked])
    return dict(root=root, store=store, gens=gens, picked=set(picked), first=first)


def test_the_assigner_serves_only_the_rounds_selected_images(loop_root):
    store, picked, gens = loop_root["store"], loop_root["picked"], loop_root["gens"]
    asg = Assigner(store, overlap=1, tasks=("binary", "ranking"))  # None: the newest round, 1
    assert asg.round == 1
    binary = [it.image_ids[0] for it in asg._items["binary"]]
    assert sorted(binary) == sorted(picked)
    # a ranking needs 2 or more selected images of a prompt: only the first prompt has them
    rankings = asg._items["ranking"]
    assert len(rankings) == 1 and set(rankings[0].image_ids) < picked and rankings[0].prompt_id == loop_root["first"]
    not_served = gens[~gens["image_id"].isin(picked)]["image_id"].iloc[0]
    with pytest.raises(UserError, match="not part of this round"):
        asg.image_path(not_served)
    # round 0 has no selections: every image of it, none of round 1
    zero = Assigner.open(LabelConfig(root=str(loop_root["root"]), round=0, gold=GoldConfig(source="none")), "v")
    assert sorted(it.item_id for it in zero._items["binary"]) == sorted(gens[gens["round"] == 0]["image_id"])
    assert len(zero._items["ranking"]) == 3


def test_a_round_without_images_is_one_clear_error(loop_root):
    with pytest.raises(UserError, match=r"round 5 has no images .* \(it has rounds \[0, 1\]\)") as e:
        Assigner.open(LabelConfig(root=str(loop_root["root"]), round=5), "v")
    assert "round=" in e.value.fix
    assert not (loop_root["root"] / "gold").exists()  # nothing written
    with pytest.raises(UserError, match="round=-1 must be >= 0"):
        from core.config import load_config

        load_config(LabelConfig, None, ["round=-1"])


def test_simulated_raters_label_only_the_selected_images_and_gold_comes_from_them(loop_root):
    root, store, picked = loop_root["root"], loop_root["store"], loop_root["picked"]
    out = simulate(SimulateConfig(label=LabelConfig(root=str(root), overlap=2, gold=GoldConfig(share=0.34)),
                                  raters=3, flip_rate=0.0))
    assert out["round"] == 1 and out["added_binary"] > 0 and out["added_rankings"] > 0
    gold = store.to_pandas("gold")
    assert len(gold) == 1 and set(gold["image_id"]) <= picked  # 0.34 x 3 served images
    labels = store.to_pandas("binary_labels")
    assert set(labels["image_id"]) == picked  # every selected image, nothing else
    rankings = store.to_pandas("rankings")
    assert {i for ids in rankings["image_ids"] for i in ids} <= picked
    # labels carry no round: a label's round is its image's
    assert len(read_table(root, "binary_labels", rounds="1", gold=True)) == len(labels)
    assert len(read_table(root, "binary_labels", rounds="1")) == int((~labels["is_gold"]).sum())  # gold out by default
    assert read_table(root, "binary_labels", rounds="0").empty
    # the same driver without the app's config serves the same images; a round named explicitly
    # is served whole when it has no selections
    summary = simulate_round(store, [RaterProfile("r0", flip_rate=0.0), RaterProfile("r1", flip_rate=0.0)],
                             overlap=1, ranking=False, round=0)
    zero = loop_root["gens"][loop_root["gens"]["round"] == 0]
    after = store.to_pandas("binary_labels")
    assert summary.binary_labels == len(zero) and set(after["image_id"]) == picked | set(zero["image_id"])


def test_admin_counts_per_round(loop_root):
    root, store = loop_root["root"], loop_root["store"]
    simulate(SimulateConfig(label=LabelConfig(root=str(root), overlap=1, gold=GoldConfig(source="none")),
                            raters=2, flip_rate=0.0))
    counts = round_counts(store)
    assert list(counts.columns) == ROUND_COLUMNS and list(counts["round"]) == [1, 0]
    one, zero = counts.iloc[0], counts.iloc[1]
    assert (one["images"], one["selected"], one["binary_labels"], one["rankings"]) == (9, 3, 3, 1)
    assert (zero["images"], zero["selected"], zero["binary_labels"], zero["rankings"]) == (6, 0, 0, 0)
    labels = store.to_pandas("binary_labels")
    answered = labels[labels["label"] != "skip"]
    assert one["good_share"] == pytest.approx((answered["label"] == "good").mean(), abs=1e-3)
    assert math.isnan(zero["good_share"])
