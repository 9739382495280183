"""Export a round's labels as they stand (undone labels removed) for analysts and reward training.

``<root>/exports/<UTC timestamp>/`` receives one Parquet file per table (binary_labels, rankings,
pairs derived from the rankings, generations, gold) with the canonical schemas, a ``summary.json``
of the round's statistics, and a zip of all of them (what the admin tab offers for download).
Images stay where they are: ``generations.image_path`` is relative to the dataset root.  With
``format="hf"`` it writes ``<root>/exports/<UTC timestamp>-hf/`` instead: a Hugging Face dataset
folder with the images in it (:mod:`labeling_app.hf_export`).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from data.labels import current
from data.pairs import rankings_to_pairs
from data.schemas import BINARY_LABELS, GENERATIONS, GOLD, RANKINGS
from data.store import Store
from labeling_app.gold import read_gold
from labeling_app.stats import round_report

EXPORTS_DIR = "exports"


ExportFormat = Literal["parquet", "hf"]
"""parquet: the canonical tables + summary, zipped; hf: a Hugging Face dataset folder with the
images (:mod:`labeling_app.hf_export`)."""


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    zip_path: Path | None  # None for format hf (a dataset folder, not zipped)
    rows: dict[str, int]


def export_round(store: Store, out_dir: str | os.PathLike | None = None,
                 format: ExportFormat = "parquet") -> ExportResult:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    directory = Path(out_dir) if out_dir else store.root / EXPORTS_DIR / (stamp + ("-hf" if format == "hf" else ""))
    if format == "hf":
        from labeling_app.hf_export import write_hf_dataset

        directory.parent.mkdir(parents=True, exist_ok=True)
        return ExportResult(directory, None, write_hf_dataset(store, directory))
    directory.mkdir(parents=True, exist_ok=False)
    rankings = current(store, RANKINGS.name)
    tables = {
        "binary_labels": current(store, BINARY_LABELS.name),
        "rankings": rankings,
        "pairs": rankings_to_pairs(rankings),
        "generations": store.read(GENERATIONS),
        "gold": store.read(GOLD),
    }
    for name, table in tables.items():
        pq.write_table(table, directory / f"{name}.parquet", compression="zstd")
    summary = round_report(store, read_gold(store)).summary()
    summary["exported_at"] = stamp
    (directory / "summary.json").write_text(json.dumps(summary, indent=1))
    zip_path = directory / f"labels-{stamp}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in tables:
            z.write(directory / f"{name}.parquet", f"{name}.parquet")
        z.write(directory / "summary.json", "summary.json")
    return ExportResult(directory, zip_path, {k: v.num_rows for k, v in tables.items()})
