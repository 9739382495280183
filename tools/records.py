"""Experiment records: each study folder ``experiments/<study>/`` keeps its README (the question,
the command, the conclusion table) and its records in one file, ``records.jsonl``: one JSON object a
line, ``{"file": "<kind>-<date>-<label>.json", "record": <what that run wrote>}``, in file-name order.

A run's output (a demo's results.json, a bench.json, a metrics.json with its ``command``) is
dropped into its study folder as a loose ``<kind>-<date>-<label>.json``; ``make results-page``
files every loose record into its study's ``records.jsonl`` (:func:`pack`) before it reads them, so
a study is two tracked files however many runs it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from core.errors import UserError

RECORDS = "records.jsonl"
KINDS = ("demo", "bench", "finetune", "reward", "probe", "loop", "stages")
NOT_RECORDS = ("readme.json",)  # experiments/readme.json: which demo runs the README quotes


def machine() -> str:
    """The machine a record's run ran on, as its ``device`` key: this one, read from /proc/cpuinfo
    (its model name, and AVX-512 / AVX2 / AMX, which set CPU timings); every study runs on 2 cores."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = "AVX512" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    return f"2 CPU cores ({name}, {isa}{', AMX' if 'amx_tile' in flags else ', no AMX'})"


def _loose(study: Path) -> list[Path]:
    return sorted(f for f in study.glob("*.json") if f.name not in NOT_RECORDS)


def read_records(study: Path) -> list[tuple[str, object]]:
    """The (file name, record) pairs of one study folder: its records.jsonl, then loose files."""
    out: list[tuple[str, object]] = []
    path = study / RECORDS
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append((row["file"], row["record"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path} line {n} is not a record ({e}).",
                                'each line is {"file": "<kind>-<date>-<label>.json", "record": {...}}.') from None
    for f in _loose(study):
        try:
            out.append((f.name, json.loads(f.read_text())))
        except json.JSONDecodeError as e:
            raise UserError(f"{f} is not JSON ({e}).", "replace it with the run's own output file.") from None
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"{study} holds the records {dup} twice (in {RECORDS} and as loose files).",
                        "give the new run another label in its file name.")
    return out


def studies(folder: str | Path) -> list[Path]:
    """The study folders under ``folder`` (any depth) that hold records, and ``folder`` itself."""
    folder = Path(folder)
    found = {f.parent for f in folder.rglob("*.json") if f.name not in NOT_RECORDS} | \
        {f.parent for f in folder.rglob(RECORDS)}
    return sorted(found)


def iter_records(folder: str | Path) -> Iterator[tuple[str, object]]:
    """Every (file name, record) under ``folder``, in file-name order."""
    rows = [r for s in studies(folder) for r in read_records(s)]
    yield from sorted(rows, key=lambda r: r[0])


def load_runs(folder: str | Path) -> dict[str, list[tuple[str, object]]]:
    """The records under ``folder`` by kind (:data:`KINDS`: the file name's first word), each as
    (label, record): the label is the file name without its kind and ``.json``."""
    runs: dict[str, list[tuple[str, object]]] = {k: [] for k in KINDS}
    for name, record in iter_records(folder):
        kind = name.split("-", 1)[0]
        if kind in runs:
            runs[kind].append((name.removeprefix(f"{kind}-").removesuffix(".json"), record))
    return runs


def pack(folder: str | Path) -> int:
    """File every loose record of every study under ``folder`` into its ``records.jsonl`` (sorted by
    file name, written atomically, then the loose files removed); returns how many moved."""
    moved = 0
    for study in studies(folder):
        loose = _loose(study)
        if not loose:
            continue
        rows = sorted(read_records(study), key=lambda r: r[0])
        path = study / RECORDS
        tmp = path.with_name(f".{RECORDS}.tmp")
        tmp.write_text("".join(json.dumps({"file": n, "record": r}, separators=(",", ":")) + "\n" for n, r in rows))
        os.replace(tmp, path)
        for f in loose:
            f.unlink()
        moved += len(loose)
    return moved
