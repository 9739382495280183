"""Rows and files agree: every stage that reads a round image checks the file against its
generations row (pixel size, sha256) through data.generations.check_image, so a file replaced
after its row was written is one clear error naming the image."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import DataError
from data import Store
import data.generations as generations
from data.generations import check_image, image_bytes, load_image
from labeling_app.simulate import simulate_round
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set

torch.set_num_threads(1)


def _replace_with(path, w, h, seed=0):
    """Put another PNG at ``path`` (a new file, as an editor or a copy would)."""
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path.with_suffix(".tmp.png"))
    os.replace(path.with_suffix(".tmp.png"), path)


@pytest.fixture
def small_round(tmp_path):
    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:4], per_prompt=2, seed=3)
    return store


def test_check_names_the_image_on_size_sha_missing_and_unreadable(small_round):
    root = small_round.root
    rows = small_round.to_pandas("generations")
    for _, r in rows.iterrows():
        assert check_image(root, r) == (root / r["image_path"]).resolve()
        assert load_image(root, r).size == (64, 64)
    r0, r1, r2, r3 = (rows.iloc[i] for i in range(4))
    _replace_with(root / r0["image_path"], 48, 32)
    with pytest.raises(DataError, match=rf"image {r0['image_id']} .* is 48x32 pixels but its generations row says 64x64"):
        load_image(root, r0)
    _replace_with(root / r1["image_path"], 64, 64)  # same size, other pixels
    with pytest.raises(DataError, match=rf"image {r1['image_id']} .* does not match its generations row: its sha256"):
        check_image(root, r1)
    (root / r2["image_path"]).unlink()
    with pytest.raises(DataError, match=rf"image {r2['image_id']} is missing"):
        image_bytes(root, r2)
    (root / r3["image_path"]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"image {r3['image_id']} .* is not a readable image"):
        check_image(root, r3)


def test_sha256_is_computed_once_per_version_of_a_file(small_round, monkeypatch):
    calls = []
    real = generations.image_facts
    monkeypatch.setattr(generations, "image_facts", lambda data: calls.append(1) or real(data))
    monkeypatch.setattr(generations, "_FACTS", type(generations._FACTS)())
    root = small_round.root
    r = small_round.to_pandas("generations").iloc[0]
    for _ in range(3):
        check_image(root, r)
        load_image(root, r)
    assert len(calls) == 1
    _replace_with(root / r["image_path"], 64, 64, seed=5)  # a new version: checked again, and caught
    with pytest.raises(DataError, match="does not match"):
        check_image(root, r)
    assert len(calls) == 2


def test_make_reward_stops_on_a_file_that_no_longer_matches_its_row(tmp_path):
    """The issue's case: a 48x32 PNG where the row says 64x64 was trained on silently (exit 0)."""
    from core.config import load_config
    from reward.config import RewardConfig
    from reward.train import train_reward
    from tiny_models import make_tiny_clip

    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[::9][:6] + prompt_set("heldout")[:3], per_prompt=2, seed=1,
                 mismatch_rate=0.5)
    simulate_round(store, default_panel(2, flip_rate=0.0), overlap=1, ranking=False)
    row = store.to_pandas("generations").iloc[3]
    _replace_with(store.root / row["image_path"], 48, 32)
    clip = make_tiny_clip(tmp_path / "clip", image_size=32)
    out = tmp_path / "reward"
    cfg = load_config(RewardConfig, None, [
        f"data.root={store.root}", f"model.clip={clip}", f"out_dir={out}", "device=cpu", "progress=false",
        "data.min_val_prompts=1", "train.epochs=1", "train.ablation_seeds=1", "model.hidden=[8]"])
    with pytest.raises(DataError, match=rf"image {row['image_id']} .* is 48x32 pixels but its generations row says 64x64"):
        train_reward(cfg)
    assert not out.exists()


def test_the_labeling_app_will_not_serve_a_file_that_no_longer_matches(small_round):
    from labeling_app.assignment import Assigner

    asg = Assigner(small_round, overlap=1, tasks=("binary",))
    rows = small_round.to_pandas("generations")
    assert asg.image_path(rows["image_id"].iloc[0]).is_file()
    _replace_with(small_round.root / rows["image_path"].iloc[1], 48, 32)
    with pytest.raises(DataError, match=rf"image {rows['image_id'].iloc[1]} .* is 48x32"):
        asg.image_path(rows["image_id"].iloc[1])
