"""Export a round's labels as they stand (undone labels removed) for analysts and reward training.

``<root>/exports/<UTC timestamp>/`` receives one Parquet file per table (binary_labels, rankings,
pairs derived from the rankings, generations, gold, the marks of current bad answers) with the canonical schemas, a ``summary.json``
of the round's statistics, and a zip of all of them (what the admin tab offers for download).
Images stay where they are: ``generations.image_path`` is relative to the dataset root.  With
``format="hf"`` it writes ``<root>/exports/<UTC timestamp>-hf/`` instead: a Hugging Face dataset
folder with the images in it (:mod:`labeling_app.hf_export`).

Exports hold every rater's labels and the gold answers, so they are the owner's alone: folders
0700, files 0600, written under a temporary name and renamed when complete.  The app hands them
out only through its admin-checked download route (:func:`export_file` finds the file), never
through Gradio's file cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from core.errors import UserError
from data.labels import current
from data.marks import current_marks
from data.pairs import rankings_to_pairs
from data.schemas import BINARY_LABELS, GENERATIONS, GOLD, RANKINGS
from data.store import Store, write_parquet
from labeling_app.hf_export import write_hf_dataset
from labeling_app.stats import round_report

EXPORTS_DIR = "exports"
DIR_MODE, FILE_MODE = 0o700, 0o600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


ExportFormat = Literal["parquet", "hf"]
"""parquet: the canonical tables + summary, zipped; hf: a Hugging Face dataset folder with the
images (:mod:`labeling_app.hf_export`)."""


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    zip_path: Path | None  # None for format hf (a dataset folder, not zipped)
    rows: dict[str, int]


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)  # also tightens a folder an older version left world-readable


def _make_private(tree: Path) -> None:
    for folder, _, files in os.walk(tree):
        os.chmod(folder, DIR_MODE)
        for f in files:
            os.chmod(os.path.join(folder, f), FILE_MODE)


def export_round(store: Store, out_dir: str | os.PathLike | None = None,
                 format: ExportFormat = "parquet") -> ExportResult:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    final = Path(out_dir) if out_dir else store.root / EXPORTS_DIR / (stamp + ("-hf" if format == "hf" else ""))
    if final.exists():
        raise UserError(f"{final} already exists.", "export to a new folder.")
    if out_dir:
        final.parent.mkdir(parents=True, exist_ok=True)
    else:
        _private_dir(final.parent)
    if format == "hf":
        rows = write_hf_dataset(store, final)  # under a temporary name beside it, renamed when complete
        _make_private(final)
        return ExportResult(final, None, rows)
    # Everything is read (where a damaged table fails) before the temporary folder is made.
    rankings = current(store, RANKINGS.name)
    tables = {
        "binary_labels": current(store, BINARY_LABELS.name),
        "rankings": rankings,
        "pairs": rankings_to_pairs(rankings),
        "generations": store.read(GENERATIONS),
        "gold": store.read(GOLD),
        "marks": current_marks(store),  # where bad answers say their image is wrong (data.marks)
    }
    summary = round_report(store).summary()
    summary["exported_at"] = stamp
    directory = final.with_name(f".{final.name}.tmp")
    directory.mkdir(mode=DIR_MODE)
    zip_name = f"labels-{stamp}.zip"
    try:
        for name, table in tables.items():
            write_parquet(table, directory / f"{name}.parquet")  # a table without rows too
        (directory / "summary.json").write_text(json.dumps(summary, indent=1))
        with zipfile.ZipFile(directory / zip_name, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name in tables:
                z.write(directory / f"{name}.parquet", f"{name}.parquet")
            z.write(directory / "summary.json", "summary.json")
        _make_private(directory)
        os.rename(directory, final)
    except BaseException:  # a full disk, an interrupt: no half-written export is left behind
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return ExportResult(final, final / zip_name, {k: v.num_rows for k, v in tables.items()})


def export_file(root: str | os.PathLike, stamp: str, name: str) -> Path | None:
    """The file ``name`` of the finished export ``stamp`` of the round at ``root``; None for
    anything else (names are single path parts; nothing outside ``<root>/exports`` resolves)."""
    if not (_NAME_RE.match(stamp) and _NAME_RE.match(name)):
        return None
    base = (Path(root) / EXPORTS_DIR).resolve()
    path = (base / stamp / name).resolve()
    return path if path.is_relative_to(base) and path.is_file() else None
