"""make label-export ARGS="format=hf": a Hugging Face dataset folder that `datasets` opens offline,
binary labels with their images and rankings in the Pick-a-Pic pair layout."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import DataError
from data import Store
from data.generations import load_image
from data.labels import current, retract
from data.pairs import rankings_to_pairs
from labeling_app.export import export_round
from labeling_app.simulate import simulate_round
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("hf") / "round")
    render_round(store, prompt_set("train")[:3], per_prompt=3, seed=2, mismatch_rate=0.5)
    simulate_round(store, default_panel(2, flip_rate=0.1), overlap=2)
    first = current(store, "binary_labels").to_pylist()[0]
    retract(store, "binary_labels", first["label_id"], first["rater_id"])  # an undone answer
    return store


def _load(files, tmp_path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files=[str(f) for f in files], cache_dir=str(tmp_path / "cache"))["train"]


def test_hf_export_loads_with_datasets(labelled, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datasets import Image as ImageFeature

    out = export_round(labelled, tmp_path / "export", format="hf")
    assert out.zip_path is None and (out.directory / "README.md").is_file()
    assert not list(tmp_path.glob(".tmp-*"))
    card = (out.directory / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "config_name: pairs" in card

    gens = labelled.to_pandas("generations").set_index("image_id", drop=False)
    labels = current(labelled, "binary_labels").to_pandas().set_index("label_id")
    binary = _load((out.directory / "binary_labels").glob("*.parquet"), tmp_path)
    assert isinstance(binary.features["image"], ImageFeature)
    assert len(binary) == len(labels) == out.rows["binary_labels"] > 0  # the undone answer is not there
    for ex in binary.select(range(4)):
        want = labels.loc[ex["label_id"]]
        assert (ex["image_id"], ex["label"], ex["rater_id"]) == (want["image_id"], want["label"], want["rater_id"])
        assert ex["prompt"] == gens.loc[ex["image_id"], "prompt"]
        assert np.array_equal(np.asarray(ex["image"].convert("RGB")),
                              np.asarray(load_image(labelled.root, gens.loc[ex["image_id"]])))

    pairs = _load((out.directory / "pairs").glob("*.parquet"), tmp_path)
    want = rankings_to_pairs(current(labelled, "rankings")).to_pandas()
    assert len(pairs) == len(want) == out.rows["pairs"] > 0
    pick_a_pic = {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "are_different", "has_label",
                  "best_image_uid", "image_0_uid", "image_1_uid", "model_0", "model_1", "ranking_id",
                  "user_id", "num_example_per_prompt", "created_at"}
    assert pick_a_pic <= set(pairs.column_names)
    for ex in pairs:
        assert ex["label_0"] + ex["label_1"] == 1.0 and ex["has_label"]
        best = {1.0: ex["image_0_uid"], 0.0: ex["image_1_uid"], 0.5: ""}[ex["label_0"]]
        assert ex["best_image_uid"] == best and ex["caption"] == gens.loc[ex["image_0_uid"], "prompt"]
        for side in (0, 1):
            im = Image.open(io.BytesIO(ex[f"jpg_{side}"]))
            row = gens.loc[ex[f"image_{side}_uid"]]
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(load_image(labelled.root, row)))
    assert sorted(pairs["num_example_per_prompt"]) == sorted(
        want["prompt_id"].map(want["prompt_id"].value_counts()).tolist())

    # The folder itself, through its dataset card's configs.
    from datasets import load_dataset

    by_card = load_dataset(str(out.directory), "pairs", cache_dir=str(tmp_path / "cache2"))["train"]
    assert len(by_card) == len(pairs)


def test_hf_export_cli_and_a_mismatched_file_stops_it_whole(labelled, tmp_path, capsys):
    import shutil

    from pipelines.cli import run
    from pipelines.label_export import main

    root = tmp_path / "copy"
    shutil.copytree(labelled.root, root)
    assert run(main, [f"root={root}", "format=hf"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["zip"] is None and out["directory"].endswith("-hf") and os.path.isdir(out["directory"])
    # the owner's alone, like the zipped export: folders 0700, files 0600
    modes = {(p.is_dir(), p.stat().st_mode & 0o777) for p in [Path(out["directory"]), *Path(out["directory"]).rglob("*")]}
    assert modes == {(True, 0o700), (False, 0o600)}
    assert run(main, [f"root={root}", "format=zip"]) == 2
    assert "format" in capsys.readouterr().err

    row = Store(root).to_pandas("generations").iloc[0]
    Image.new("RGB", (48, 32)).save(root / row["image_path"], format="PNG")
    with pytest.raises(DataError, match=rf"image {row['image_id']} .* is 48x32"):
        export_round(Store(root), tmp_path / "bad", format="hf")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_table_without_rows_is_left_out_and_no_labels_is_an_error(tmp_path):
    from core.errors import UserError

    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:2], per_prompt=2, seed=4)
    with pytest.raises(UserError, match="no labels in"):
        export_round(store, tmp_path / "none", format="hf")
    assert not (tmp_path / "none").exists()
    simulate_round(store, default_panel(1), overlap=1, ranking=False)
    out = export_round(store, tmp_path / "binary-only", format="hf")
    assert out.rows == {"binary_labels": 4} and sorted(p.name for p in out.directory.iterdir()) == [
        "README.md", "binary_labels"]
    assert "config_name: pairs" not in (out.directory / "README.md").read_text()
    assert len(_load((out.directory / "binary_labels").glob("*.parquet"), tmp_path)) == 4


def test_one_word_rule_for_chips_marks_export_card_and_docs(tmp_path):
    """Issue 74: prompt_misalignment_label split the prompt at any whitespace (as the app's word
    chips do) while the card and docs/labeling.md said "spaces", which misaligns an analyst's labels
    on a prompt with a tab or a double space."""
    import pyarrow.parquet as pq

    from collect.imports import ImportConfig, import_images
    from data.marks import PROMPT_WORDS_RULE, prompt_words
    from labeling_app.assignment import Assigner
    from labeling_app.hf_export import write_hf_dataset
    from labeling_app.marking import word_chips_html

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(src / "a.png")
    prompt = "a red\tfox  in the\nsnow"
    (src / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "prompt": prompt}) + "\n")
    root = tmp_path / "round"
    import_images(ImportConfig(src=str(src), root=str(root)))
    store = Store(root)
    assert store.to_pandas("generations")["prompt"].tolist() == [prompt]
    words = prompt_words(prompt)
    assert words == ["a", "red", "fox", "in", "the", "snow"]  # prompt.split(" ") gives 5 pieces
    assert word_chips_html(prompt, "optional").count('class="word-chip"') == len(words)

    asg = Assigner(store, overlap=1, tasks=("binary",))
    a = asg.current("rita", "binary")
    asg.answer_bad("rita", a.token, [(0.5, 0.5)], [words.index("snow")])
    write_hf_dataset(store, tmp_path / "hf")
    row, = pq.read_table(tmp_path / "hf" / "binary_labels").to_pylist()
    assert row["prompt_misalignment_label"] == "1 1 1 1 1 0" and row["mark_words"] == [5]

    card = (tmp_path / "hf" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("| `prompt_misalignment_label`"))
    assert PROMPT_WORDS_RULE in line and "split on spaces" not in line
    docs = (Path(__file__).resolve().parents[1] / "docs" / "labeling.md").read_text()
    assert "split at each run of whitespace" in docs and "split at spaces" not in docs
    assert "split at each run of whitespace" in PROMPT_WORDS_RULE
