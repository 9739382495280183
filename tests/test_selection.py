"""What to label next (collect.selection, make select): budget, determinism, uncertainty sampling
picks the images nearest p = 0.5 of a real (tiny) reward model, mix, and every refusal before
anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from collect.selection import (SelectConfig, capped, choose, epistemic_uncertainty, select, uncertainty,
                              whole_prompts)
from core.config import load_config
from core.errors import UserError
from data import Store, read_table
from data.generations import load_image
from labeling_app.simulate import simulate_round
from pipelines.cli import run
from pipelines.select import main as select_main
from reward.config import RewardConfig
from reward.model import RewardModel
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set
from test_reward_rounds import render_into_round
from tiny_models import make_tiny_clip

torch.set_num_threads(2)


def labelled_round_and_reward(base):
    """A round 0 of 14 prompts x 4 renders labelled by simulated raters at ``base / "root"``, and a
    tiny reward trained on it at ``base / "reward"``."""
    from reward.train import train_reward

    root = base / "root"
    store = Store(root)
    render_round(store, prompt_set("train")[::9][:10] + prompt_set("heldout")[::8][:4], per_prompt=4, seed=1,
                 mismatch_rate=0.5)
    simulate_round(store, default_panel(4, flip_rate=0.1), overlap=2)
    clip = make_tiny_clip(base / "clip", image_size=32)
    train_reward(load_config(RewardConfig, None, [
        f"data.root={root}", f"model.clip={clip}", f"out_dir={base / 'reward'}", "device=cpu", "progress=false",
        "data.min_val_prompts=3", "train.epochs=2", "train.ablate_aux=false", "train.baselines=false",
        "model.hidden=[16]"]))
    return root, base / "reward"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A labelled round 0, a reward trained on it, and an unlabelled round 1 of 6 prompts x 4."""
    root, reward = labelled_round_and_reward(tmp_path_factory.mktemp("sel"))
    render_into_round(Store(root), prompt_set("train")[5::9][:6], per_prompt=4, round=1, seed=3)
    return root, reward


def _fresh(loop, tmp_path):
    root, reward = loop
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    return copy, reward


def _cfg(root, reward, *more):
    return load_config(SelectConfig, None, [f"root={root}", f"reward={reward}", "round=1", "device=cpu",
                                            "progress=false", *more])


def _round1_uncertainty(root, reward) -> tuple[RewardModel, dict]:
    """Round 1's uncertainties by hand: the reward's epistemic spread of P(good), p (1 - p) s."""
    gens = read_table(root, "generations", rounds="1")
    rm = RewardModel.from_pretrained(reward, device="cpu")
    images, prompts = [load_image(root, r) for _, r in gens.iterrows()], gens["prompt"].tolist()
    p, spread = rm.score(images, prompts).numpy(), rm.spread(images, prompts).numpy()
    return rm, dict(zip(gens["image_id"], p * (1 - p) * spread))


def test_uncertain_picks_the_images_the_reward_knows_least(loop, tmp_path):
    root, reward = _fresh(loop, tmp_path)
    res = select(_cfg(root, reward, "method=uncertain", "budget=5", "prompt_cap=0"))
    rm, u = _round1_uncertainty(root, reward)
    ranked = sorted(u, key=u.get, reverse=True)
    assert set(res.image_ids) == set(ranked[:5]) and res.selected == 5 == res.by_uncertainty
    assert res.images == 24 and res.reward_model == rm.model_id and res.uncertainty_kind == "epistemic"
    assert res.mean_uncertainty_selected >= res.mean_uncertainty_all
    rows = read_table(root, "selections")
    assert sorted(rows["image_id"]) == sorted(res.image_ids) and set(rows["method"]) == {"uncertain"}
    assert set(rows["round"]) == {1} and set(rows["reward_model"]) == {rm.model_id}
    assert np.allclose(rows.set_index("image_id")["uncertainty"].loc[res.image_ids], [u[i] for i in res.image_ids],
                       atol=1e-5)


def test_random_is_deterministic_given_the_seed(loop, tmp_path):
    picks = []
    for i, seed in enumerate((0, 0, 1)):
        root, _ = _fresh(loop, tmp_path / str(i))
        picks.append(select(_cfg(root, "null", "method=random", "budget=6", f"seed={seed}")).image_ids)
    assert picks[0] == picks[1] and picks[0] != picks[2] and len(set(picks[0])) == 6
    rows = read_table(root, "selections")
    assert rows["uncertainty"].isna().all() and rows["reward_model"].isna().all()


def test_mix_and_all(loop, tmp_path):
    root, reward = _fresh(loop, tmp_path / "a")
    mix = select(_cfg(root, reward, "method=mix", "budget=8", "mix_share=0.25"))
    root2, _ = _fresh(loop, tmp_path / "b")
    unc = select(_cfg(root2, reward, "method=uncertain", "budget=2"))
    assert mix.by_uncertainty == 2 and mix.at_random == 6 and len(set(mix.image_ids)) == 8
    assert mix.image_ids[:2] == unc.image_ids  # the uncertain share first, the same images
    rows = read_table(root, "selections").set_index("image_id").loc[mix.image_ids]
    assert rows["uncertainty"].iloc[:2].notna().all() and rows["uncertainty"].iloc[2:].isna().all()  # random: null
    root3, _ = _fresh(loop, tmp_path / "c")
    every = select(_cfg(root3, "null", "method=all"))
    assert every.selected == every.images == 24 and every.mean_uncertainty_all is None


def test_the_prompt_cap_spreads_the_uncertainty_picks(loop, tmp_path):
    root, reward = _fresh(loop, tmp_path)
    res = select(_cfg(root, reward, "method=uncertain", "budget=6", "prompt_cap=1"))  # at most 1 of each of 6 prompts
    gens = read_table(root, "generations", rounds="1").set_index("image_id")
    assert gens.loc[res.image_ids, "prompt_id"].nunique() == 6
    _, u = _round1_uncertainty(root, reward)
    best = {}
    for i, v in u.items():  # each prompt's most uncertain image
        pid = gens.loc[i, "prompt_id"]
        best[pid] = max(best.get(pid, (-1.0, "")), (v, i))
    assert set(res.image_ids) == {i for _, i in best.values()}


def test_whole_prompts_for_a_label_scarce_round(loop, tmp_path):
    root, _ = _fresh(loop, tmp_path)
    res = select(_cfg(root, "null", "method=prompts", "budget=10"))  # 2 prompts of 4, then 2 of a third
    per_prompt = read_table(root, "generations", rounds="1").set_index("image_id").loc[res.image_ids, "prompt_id"]
    assert res.selected == 10 and sorted(per_prompt.value_counts().tolist()) == [2, 4, 4]
    assert per_prompt.iloc[:8].nunique() == 2  # whole prompts first


def test_choose_by_hand():
    u = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    order = np.array([3, 0, 4, 1, 2])
    assert choose(u, 2, "uncertain", 0.5, order)[0].tolist() == [3, 1]  # tie 0.9: the seeded order
    picks, k = choose(u, 3, "mix", 0.34, order)
    assert k == 1 and picks.tolist() == [3, 0, 4]
    assert choose(None, 2, "random", 0.5, order)[0].tolist() == [3, 0]
    assert uncertainty(np.array([0.5, 0.0, 1.0, 0.75])).tolist() == [1.0, 0.0, 0.0, 0.5]
    groups = np.array(["a", "a", "b", "a", "b"])  # by u: 3 (a), 1 (a), 2 (b), 0 (a), 4 (b)
    assert choose(u, 3, "uncertain", 0.5, order, groups, prompt_cap=0.5)[0].tolist() == [3, 2, 1]  # 1 per prompt, then the best left
    assert choose(u, 3, "uncertain", 0.5, order, groups, prompt_cap=0.0)[0].tolist() == [3, 1, 2]
    assert capped(np.array([3, 1, 0, 2, 4]), groups, 4, 1.0).tolist() == [3, 1, 2, 4]  # 2 per prompt
    assert whole_prompts(groups, 4, order).tolist() == [0, 1, 3, 2]  # a (first in order), then b cut to fit
    assert np.allclose(epistemic_uncertainty(np.array([0.5, 0.9]), np.array([2.0, 2.0])), [0.5, 0.18])


@pytest.mark.parametrize("args, message", [
    (["method=random", "budget=25"], "more than the 24 images of round 1"),
    (["method=random", "round=7"], r"round\(s\) \[7\] have no images"),
    (["method=uncertain", "reward=null", "budget=5"], "reward is null"),
    (["method=mix", "reward=nowhere", "budget=5"], "not a reward model folder"),
])
def test_bad_inputs_refused_before_writing(loop, tmp_path, args, message):
    root, reward = _fresh(loop, tmp_path)
    with pytest.raises(UserError, match=message):
        select(_cfg(root, reward, *args))
    assert read_table(root, "selections").empty


def test_cli_prints_json_and_refuses_a_second_selection(loop, tmp_path, capsys):
    root, reward = _fresh(loop, tmp_path)
    argv = [f"root={root}", f"reward={reward}", "round=1", "budget=3", "method=uncertain", "device=cpu",
            "progress=false"]
    assert run(select_main, argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["selected"] == 3 and out["round"] == 1 and out["method"] == "uncertain"
    assert run(select_main, argv) == 2
    err = capsys.readouterr().err
    assert "already has 3 selected" in err and "to redo it" in err
    assert len(read_table(root, "selections")) == 3
