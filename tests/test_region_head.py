"""The region head (reward.region): pure helpers, then the whole path on a tiny CLIP on CPU
(simulated marks -> train -> save -> load -> heatmap; a folder without a head still loads)."""

import json

import numpy as np
import pytest
import torch

from core.errors import UserError
from data import Store
from data.marks import MARKS
from labeling_app.simulate import simulate_round
from reward.model import RewardModel
from reward.preprocess import ClipPreprocess
from reward.region.data import RegionData
from reward.region.fit import view_metrics
from reward.region.head import crop_box, to_grid, to_image_size
from shapes.marking import simulate_marks
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set
from tiny_models import tiny_reward_config

SQUARE = ClipPreprocess(64, None, (64, 64), (0.5,) * 3, (0.5,) * 3)


def test_crop_box_is_the_centre_square_clip_keeps():
    assert crop_box(SQUARE, 64, 64) == (0, 64, 0, 64)
    assert crop_box(SQUARE, 128, 256) == (0, 128, 64, 192)  # wide: the middle half of the width
    assert crop_box(ClipPreprocess(None, None, None, (0.5,) * 3, (0.5,) * 3), 30, 40) == (0, 30, 0, 40)


def test_grid_and_image_size_round_trip():
    maps = torch.zeros(1, 64, 64)
    maps[0, :16, :16] = 1.0  # the top-left 2x2 patches of an 8x8 grid
    grid = to_grid(maps, (0, 64, 0, 64), (8, 8))
    assert grid.shape == (1, 8, 8) and grid[0, :2, :2].eq(1).all() and grid[0, 2:].eq(0).all()
    back = to_image_size(grid, (64, 64), (0, 64, 0, 64))
    assert back.shape == (1, 64, 64) and back[0, 2, 2] == 1 and back[0, 40, 40] == 0
    wide = to_image_size(grid, (64, 128), crop_box(SQUARE, 64, 128))
    assert wide[0, :, :32].eq(0).all()  # outside the crop: zero


def test_view_metrics_of_a_perfect_and_a_useless_prediction():
    pts = [[[(0.1, 0.1)], []], [[]]]  # image 0: one rater clicked top-left, one marked nothing
    rd = RegionData(np.array([0, 1]), pts, [(64, 64), (64, 64)], torch.zeros(2, 8, 8), 1)
    perfect = torch.stack([to_grid(torch.from_numpy(rd.heatmaps(k))[None], (0, 64, 0, 64), (8, 8))[0]
                           for k in range(2)])
    truth = {0: rd.heatmaps(0) > 0, 1: np.zeros((64, 64), bool)}
    m = view_metrics(rd, np.array([0, 1]), perfect, SQUARE, 128, truth)
    assert m["images"] == 2 and m["marked_images"] == 1
    assert m["heatmap_auc"] > 0.95 and m["heatmap_pearson"] > 0.3 and m["rater_heatmap_auc_vs_oracle"] == 1.0
    flat = view_metrics(rd, np.array([0, 1]), torch.full((2, 8, 8), 0.5), SQUARE, 128, None)
    assert flat["heatmap_auc"] == 0.5 and np.isnan(flat["heatmap_pearson"]) and "heatmap_auc_vs_oracle" not in flat


@pytest.fixture(scope="module")
def marked_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("marked")
    store = Store(root)
    render_round(store, prompt_set("train")[::9][:10] + prompt_set("heldout")[::6][:4], per_prompt=4,
                 seed=2, mismatch_rate=0.6)
    simulate_round(store, default_panel(3, flip_rate=0.05), overlap=2)
    assert simulate_marks(store, seed=0) > 0
    return root


def _cfg(root, clip, out, *more):
    return tiny_reward_config(root, clip, out, "train.epochs=2", "train.baselines=false", "train.ablate_aux=false",
                              "region.epochs=3", "region.hidden=16", *more)


@pytest.mark.slow
def test_region_head_trains_saves_loads_and_predicts(marked_root, tiny_clip, tmp_path):
    from data.generations import load_image
    from reward.train import train_reward

    out = tmp_path / "reward"
    result = train_reward(_cfg(marked_root, tiny_clip, out))
    assert (out / "region_head.safetensors").is_file()
    cfg = json.loads((out / "reward_config.json").read_text())
    assert cfg["region"]["spec"]["grid"] == [4, 4] and cfg["region"]["file"] == "region_head.safetensors"
    from reward.summary import metrics_table

    assert "region head (" in metrics_table(json.loads((out / "metrics.json").read_text()))
    m = json.loads((out / "metrics.json").read_text())["region"]
    assert m["marks"] > 0 and m["grid"] == [4, 4]
    for view in ("val_images", "val_prompts"):
        for key in ("heatmap_auc", "heatmap_pearson", "heatmap_auc_vs_oracle", "heatmap_pearson_vs_oracle",
                    "rater_heatmap_auc_vs_oracle"):
            assert key in m[view], (view, key)
        assert 0.0 <= m[view]["heatmap_auc"] <= 1.0
    rm = RewardModel.from_pretrained(out, device="cpu")
    gens = Store(marked_root).to_pandas("generations").iloc[:3]
    pil = [load_image(marked_root, r) for _, r in gens.iterrows()]
    hm = rm.heatmap(pil, gens["prompt"].tolist())
    assert hm.shape == (3, 64, 64) and hm.dtype == torch.float32 and ((hm >= 0) & (hm <= 1)).all()
    assert torch.allclose(hm, result.model.heatmap(pil, gens["prompt"].tolist()), atol=1e-6)
    assert rm.model_id == result.model.model_id
    assert rm.region_head.threshold == result.model.region_head.threshold == m["threshold"]  # saved with the head

    # region.head=off: no head in the folder; it loads, scores, and heatmap() is one clear error
    plain = tmp_path / "plain"
    train_reward(_cfg(marked_root, tiny_clip, plain, "region.head=off"))
    assert not (plain / "region_head.safetensors").exists()
    assert "region" not in json.loads((plain / "metrics.json").read_text())
    rp = RewardModel.from_pretrained(plain, device="cpu")
    assert rp.region_head is None and rp.score(pil, gens["prompt"].tolist()).shape == (3,)
    with pytest.raises(UserError, match="no region head"):
        rp.heatmap(pil, gens["prompt"].tolist())


def test_region_head_on_without_marks_is_one_error(marked_root, tiny_clip, tmp_path):
    from reward.train import train_reward

    bare = tmp_path / "bare"
    store = Store(bare)
    render_round(store, prompt_set("train")[:6], per_prompt=3, seed=1)
    simulate_round(store, default_panel(2, flip_rate=0.0), overlap=1)
    assert not store.exists(MARKS)
    with pytest.raises(UserError, match="no marks"):
        train_reward(_cfg(bare, tiny_clip, tmp_path / "o", "region.head=on", "data.val_split=none"))
    assert not (tmp_path / "o").exists()


def test_heatmap_on_a_vitl_layout_clip_and_a_wide_image(tmp_path):
    """Any CLIP folder: ViT-L/14's layout (patch 14) gives its own grid; a wide image's heatmap
    covers CLIP's centre crop and is zero outside it."""
    from core.loading import load_clip
    from reward.region.head import build_region_head
    from test_reward import make_vitl_layout_clip

    rm = RewardModel.build(load_clip(make_vitl_layout_clip(tmp_path / "vitl"), device="cpu"))
    rm.region_head = build_region_head(rm, hidden=8, seed=0)
    assert rm.region_head.spec.grid == (2, 2)
    with torch.no_grad():
        rm.region_head.body[-1].bias.fill_(0.5)  # a non-zero map, to see where it lands
    wide = np.zeros((2, 28, 56, 3), np.uint8)
    hm = rm.heatmap(wide, "two red circles")
    assert hm.shape == (2, 28, 56) and hm[:, :, :14].eq(0).all() and hm[:, :, 14:42].gt(0).all()


def test_region_data_joins_marks_to_current_bad_answers(tmp_path):
    """Every good/bad answer is one rater map (good or unmarked bad: empty), skips and retracted
    answers count for nothing, and marks of retracted or good answers are not read."""
    import pandas as pd

    from data.labels import retract
    from reward.data import load_reward_data
    from reward.region.data import load_region_data

    store = Store(tmp_path)
    rows = render_round(store, prompt_set("train")[:2], per_prompt=1, seed=0)
    a, b = rows[0]["image_id"], rows[1]["image_id"]
    pid = {r["image_id"]: r["prompt_id"] for r in rows}

    def label(iid, rater, value):
        return dict(label_id=f"{iid}-{rater}", image_id=iid, prompt_id=pid[iid], rater_id=rater, label=value,
                    skip_reason="cannot tell" if value == "skip" else None,
                    created_at=pd.Timestamp("2026-01-01", tz="UTC"), duration_ms=10, is_gold=False,
                    guideline_version="g")

    store.append("binary_labels", [label(a, "r1", "bad"), label(a, "r2", "good"), label(a, "r3", "bad"),
                                   label(a, "r4", "skip"), label(b, "r1", "bad"), label(b, "r2", "bad")])

    def mark(iid, rater, x):
        return dict(label_id=f"{iid}-{rater}", image_id=iid, prompt_id=pid[iid], rater_id=rater,
                    points=[{"x": x, "y": 0.5}], words=[0], created_at=pd.Timestamp("2026-01-01", tz="UTC"))

    store.append(MARKS, [mark(a, "r1", 0.25), mark(a, "r2", 0.9), mark(b, "r1", 0.5), mark(b, "r2", 0.75)])
    retract(store, "binary_labels", f"{b}-r2", "r2")
    cfg = _cfg(tmp_path, "unused", tmp_path / "o", "data.val_split=none", "data.val_image_fraction=0",
               "data.select_fraction=0")
    data = load_reward_data(store, cfg.data, cfg.loss)
    rd = load_region_data(store, data, SQUARE, (8, 8))
    by_id = {data.images["image_id"].iloc[i]: k for k, i in enumerate(rd.image)}
    # a: r1 marked, r2 said good (its mark ignored), r3 bad without marks, r4 skipped
    assert sorted(rd.points[by_id[a]]) == [[], [], [(0.25, 0.5)]]
    assert sorted(rd.points[by_id[b]]) == [[(0.5, 0.5)]]  # r2's answer (and mark) taken back
    assert rd.marks == 2 and rd.grid.shape == (2, 8, 8)
    assert rd.heatmaps(by_id[a]).max() == pytest.approx(1 / 3) and rd.heatmaps(by_id[b]).max() == 1.0


def test_calibrate_threshold_matches_the_raters_marks_by_f1():
    from reward.region.fit import calibrate_threshold

    target = torch.zeros(2, 4, 4)
    target[0, 0, :2] = 0.33  # one rater of three touched two patches
    probs = torch.full((2, 4, 4), 0.05)
    probs[0, 0, :2] = 0.2  # a head fit by MSE predicts small values where the marks were
    t = calibrate_threshold(probs, target)
    assert 0.05 <= t < 0.2 and torch.equal(probs > t, target > 0)  # exactly the marked patches
    assert calibrate_threshold(probs, torch.zeros(2, 4, 4)) == 0.5  # nothing marked: the default
