"""read_table, the analysts' entry point: current answers by default (undone and gold out), every
row on request; and no import circle between the store, the rounds and the reader."""

import subprocess
import sys
from pathlib import Path

from data import Store, read_table
from data.labels import retract
from data.marks import MARKS
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS
from test_schemas import NOW, generation_row, label_row, ranking_row

ROOT = Path(__file__).resolve().parents[1]


def _root(tmp_path):
    store = Store(tmp_path)
    store.append(GENERATIONS, [generation_row(image_id=f"i{k}", image_path=f"images/i{k}.png") for k in range(3)])
    store.append(BINARY_LABELS, [label_row(label_id="kept", image_id="i0"),
                                 label_row(label_id="undone", image_id="i1", label="bad"),
                                 label_row(label_id="gold", image_id="i2", is_gold=True, label="bad")])
    store.append(RANKINGS, [ranking_row(ranking_id="k-kept"), ranking_row(ranking_id="k-undone")])
    store.append(MARKS, [dict(label_id=lid, image_id=img, prompt_id="p1", rater_id="r1",
                              points=[{"x": 0.5, "y": 0.5}], words=[0], created_at=NOW)
                         for lid, img in (("undone", "i1"), ("gold", "i2"))])
    retract(store, "binary_labels", "undone", "r1")
    retract(store, "rankings", "k-undone", "r1")
    return store


def test_read_table_gives_current_answers_without_gold_by_default(tmp_path):
    _root(tmp_path)
    assert list(read_table(tmp_path, "binary_labels")["label_id"]) == ["kept"]
    assert list(read_table(tmp_path, "rankings")["ranking_id"]) == ["k-kept"]
    assert read_table(tmp_path, "marks").empty  # one mark's answer undone, the other's a gold item


def test_read_table_switches_give_every_row(tmp_path):
    _root(tmp_path)
    assert sorted(read_table(tmp_path, "binary_labels", current=False, gold=True)["label_id"]) == ["gold", "kept", "undone"]
    assert sorted(read_table(tmp_path, "binary_labels", gold=True)["label_id"]) == ["gold", "kept"]
    assert sorted(read_table(tmp_path, "binary_labels", current=False)["label_id"]) == ["kept", "undone"]
    assert sorted(read_table(tmp_path, "rankings", current=False)["ranking_id"]) == ["k-kept", "k-undone"]
    assert list(read_table(tmp_path, "marks", gold=True)["label_id"]) == ["gold"]
    assert list(read_table(tmp_path, "marks", current=False)["label_id"]) == ["undone"]
    assert len(read_table(tmp_path, "retractions")) == 2  # tables with no such rows: as stored


def test_read_table_rounds_and_defaults_combine(tmp_path):
    _root(tmp_path)
    assert list(read_table(tmp_path, "binary_labels", rounds="0")["label_id"]) == ["kept"]


def test_store_and_rounds_import_without_a_circle():
    # each module on its own in a fresh interpreter: a circle shows as an ImportError there
    for module in ("data.store", "data.rounds", "data.read", "data.labels"):
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    text = (ROOT / "data" / "store.py").read_text()
    assert "data.rounds" not in text and "def read_table" not in text
