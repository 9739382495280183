"""Compare every file of two run outputs (a workflow's folders, e.g. the same tiny loop or demo run
at two commits) field by field: does a change keep behaviour?

    python -m tools.compare_runs <old out> <new out>     # exit status 0: every file the same

JSON: every leaf that differs; YAML, Markdown, text: a diff; Parquet tables: the columns whose
values differ (all parts of a table together, each column sorted); weights, images and other
files: byte equality.  Each folder's own path is replaced by <ROOT> first; part files and
TensorBoard files are matched by folder, not by their time-stamped names.  Times and seconds
differ from run to run: read them off the printed list.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path

import pandas as pd

TEXT = ("yaml", "txt", "md", "csv", "made-by-make-loop", "made-by-make-demo")  # compared as text


def files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = re.sub(r"part-\d+-[0-9a-f]+", "part-*", str(p.relative_to(root)))
            out.setdefault(re.sub(r"tfevents\..*", "tfevents.*", rel), []).append(p)
    return out


def flat(x, at=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{at}.{k}" if at else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from flat(v, f"{at}[{i}]")
    else:
        yield at, x


def table(paths: list[Path], root: Path) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True).astype(str)
    return df.replace(str(root), "<ROOT>", regex=True)


def compare(rel: str, a: list[Path], b: list[Path], old: Path, new: Path) -> bool:
    """Print how ``rel`` differs; whether it is the same."""
    kind = rel.rsplit(".", 1)[-1]
    if len(a) != len(b):
        print(f"{rel}: {len(a)} vs {len(b)} files")
        return False
    if kind == "parquet":
        da, db = table(a, old), table(b, new)
        if list(da.columns) != list(db.columns):
            print(f"{rel}: columns {list(da.columns)} vs {list(db.columns)}")
            return False
        cols = [c for c in da.columns
                if not da[c].sort_values(ignore_index=True).equals(db[c].sort_values(ignore_index=True))]
        if cols:
            print(f"{rel}: columns differ {cols}")
        return not cols
    same = True
    for pa, pb in zip(a, b):
        ta, tb = pa.read_bytes(), pb.read_bytes()
        if kind == "json":
            ja = dict(flat(json.loads(ta.decode().replace(str(old), "<ROOT>"))))
            jb = dict(flat(json.loads(tb.decode().replace(str(new), "<ROOT>"))))
            for k in sorted(set(ja) | set(jb)):
                if ja.get(k, "<absent>") != jb.get(k, "<absent>"):
                    print(f"{rel}: {k}: old={ja.get(k, '<absent>')!r} new={jb.get(k, '<absent>')!r}")
                    same = False
        elif kind in TEXT:
            la = ta.decode().replace(str(old), "<ROOT>").splitlines()
            lb = tb.decode().replace(str(new), "<ROOT>").splitlines()
            if la != lb:
                print(f"{rel}:", *list(difflib.unified_diff(la, lb, lineterm="", n=0))[2:], sep="\n")
                same = False
        elif ta != tb:
            print(f"{rel}: bytes differ")
            same = False
    return same


def main(argv: list[str] | None = None) -> int:
    """Print what differs between the two folders in ``argv``; 0 when every file is the same."""
    old, new = (Path(a).resolve() for a in (argv if argv is not None else sys.argv[1:]))
    fo, fn = files(old), files(new)
    print("only old:", sorted(set(fo) - set(fn)), "only new:", sorted(set(fn) - set(fo)))
    counts: dict[str, list[int]] = {}
    for rel in sorted(set(fo) & set(fn)):
        counts.setdefault(rel.rsplit(".", 1)[-1], [0, 0])[not compare(rel, fo[rel], fn[rel], old, new)] += 1
    print("files per kind [same, different]:", counts)
    return 0 if set(fo) == set(fn) and not any(d for _, d in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
