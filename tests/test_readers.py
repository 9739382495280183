"""The tables through the readers analysts use besides pandas and pyarrow: DuckDB and `datasets`.

A writer killed just before its rename leaves its temporary file behind; no reader may take it
for part of the table.  An exported table without rows (``gold.parquet`` of a round without gold
items) opens as an empty table with its columns.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data import Store
from data.schemas import GOLD
from labeling_app.export import export_round
from shapes.render import render_round
from shapes.world import prompt_set
from test_schemas import label_row

duckdb = pytest.importorskip("duckdb")
datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]

# Appends two rows and dies (SIGKILL) just before renaming its temporary file into place: the
# temporary file is complete, and no part of the table.
KILLED_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[2] + "/tests")
    import data.store
    from test_schemas import label_row
    data.store.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    data.store.Store(sys.argv[1]).append("binary_labels", [label_row(label_id="never-1"),
                                                            label_row(label_id="never-2")])
""")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf-cache")


def test_a_writer_killed_before_its_rename_adds_no_rows_for_any_reader(tmp_path, offline):
    store = Store(tmp_path / "round")
    store.append("binary_labels", [label_row(label_id=f"a-{i}") for i in range(4)])
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(store.root), str(ROOT)])
    assert proc.returncode == -9
    folder = store.table_dir("binary_labels")
    assert len(list(folder.iterdir())) == 2  # the acknowledged part and the leftover

    acked = {f"a-{i}" for i in range(4)}
    assert set(pd.read_parquet(folder)["label_id"]) == acked
    assert set(store.read("binary_labels")["label_id"].to_pylist()) == acked
    got = duckdb.sql(f"SELECT label_id FROM read_parquet('{folder}/*.parquet')").fetchall()
    assert {r[0] for r in got} == acked
    got = duckdb.sql(f"SELECT label_id FROM read_parquet('{store.root}/*/*.parquet')").fetchall()
    assert {r[0] for r in got} == acked
    for kwargs in ({"data_files": f"{folder}/*.parquet"}, {"data_dir": str(folder)}):
        ds = datasets.load_dataset("parquet", cache_dir=offline, **kwargs)["train"]
        assert set(ds["label_id"]) == acked, kwargs


def test_an_export_without_gold_rows_opens_in_every_reader(tmp_path, offline):
    store = Store(tmp_path / "round")
    render_round(store, prompt_set("train")[:2], per_prompt=2, seed=0, mismatch_rate=0.4)
    out = export_round(store)  # no gold pool, no labels: gold, binary_labels, ... have no rows
    gold = out.directory / "gold.parquet"
    assert pq.read_table(gold).schema.equals(GOLD.schema) and pq.read_table(gold).num_rows == 0
    assert len(pd.read_parquet(gold)) == 0
    assert duckdb.sql(f"SELECT count(*) FROM '{gold}'").fetchall() == [(0,)]
    assert [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM '{gold}'").fetchall()] == GOLD.schema.names
    ds = datasets.load_dataset("parquet", data_files=str(gold), streaming=True, cache_dir=offline)["train"]
    assert list(ds) == [] and list(ds.features) == GOLD.schema.names
    gens = datasets.load_dataset("parquet", data_files=str(out.directory / "generations.parquet"),
                                 cache_dir=offline)["train"]
    assert gens.num_rows == 4
