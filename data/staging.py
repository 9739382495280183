"""A stage that writes into a dataset root, made all-or-nothing: it works in a staging copy of the
root and the copy's folders replace the root's when it is done (:func:`staged`).

Why: the simulated raters of a label stage append labels one by one, and a rerun of a stage killed
half-way would continue on top of the rows already written with fresh assignment and rater state,
so it would end with other labels than a run never killed.  With staging, a kill before the commit
leaves the root as it was before the stage (the rerun discards the copy and labels again from the
same state, so it writes the same labels); a kill during the commit is finished by the rerun.

The copy is cheap: every file is a hard link (a copy where the file system has none).  The store
never changes a file in place (an append or a merge writes a new file and renames it in,
:mod:`data.store`), so what the stage writes in the copy never reaches a file the root shares.  A folder inside the root that is a dataset root
of its own (it has a ``generations`` table: the loop's one-shot control) is not copied.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from core.files import write_text_atomic
from core.jsonable import json_safe

STAGING = ".staging"  # <root>/.staging: the copy a stage works in
COMMIT = "commit.json"  # in the copy, once the stage is done: what moves into the root, and the stage's summary
# not copied: lock files and a writer's temporary files (data.store), hidden like the staging folder itself
SKIP = shutil.ignore_patterns(".*.lock", ".tmp-*", "_tmp-*")


def staged(root: str, stage: Callable[[str], dict]) -> dict:
    """Run ``stage`` on a staging copy of the dataset root ``root`` (it gets the copy's path) and
    move what the copy holds into ``root``; ``stage``'s summary (JSON-able).  A copy left by a kill
    is discarded, or, if its stage had finished, committed."""
    root_dir = Path(root)
    at = root_dir / STAGING
    commit = at / COMMIT
    if commit.is_file():  # killed while committing: finish it
        done = json.loads(commit.read_text())
        names, summary = done["names"], done["summary"]
    else:
        shutil.rmtree(at, ignore_errors=True)
        _link_copy(root_dir, at)
        summary = stage(str(at))
        names = sorted(p.name for p in at.iterdir() if not p.name.startswith("."))
        write_text_atomic(commit, json.dumps({"names": names, "summary": json_safe(summary)}))
    _commit(at, root_dir, names)
    shutil.rmtree(at)
    return summary


def _nested_root(path: Path) -> bool:
    return path.is_dir() and (path / "generations").is_dir()


def _link(src: str, dst: str) -> None:
    """A hard link, or a copy on a file system that has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_copy(root: Path, at: Path) -> None:
    at.mkdir(parents=True)
    for p in root.iterdir():
        if p.name.startswith(".") or _nested_root(p):
            continue
        if p.is_dir():
            shutil.copytree(p, at / p.name, copy_function=_link, ignore=SKIP)
        else:
            _link(str(p), str(at / p.name))


def _commit(at: Path, root: Path, names: list[str]) -> None:
    """Each named entry of the copy replaces the root's (a file by one rename; a folder by moving
    the root's aside, then the copy's in), written so that a rerun after a kill at any point
    finishes the job: an entry already moved is no longer in the copy."""
    for name in names:
        src, dst, old = at / name, root / name, root / f".{name}.replaced"
        if not src.exists():
            continue
        if src.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            if dst.exists():
                dst.rename(old)
            src.rename(dst)
        else:
            os.replace(src, dst)
    for name in names:
        shutil.rmtree(root / f".{name}.replaced", ignore_errors=True)
