"""Tier 1: data.staging: a stage's writes reach the dataset root all at once or not at all, and a
rerun after a kill at any point ends as a run never killed does."""

import json
from pathlib import Path

import pytest

from data.staging import COMMIT, STAGING, _commit, staged


def _rows(root, table="rankings"):
    """The parts of a table (stand-ins for the store's part files: written once, never changed)."""
    return sorted(p.read_text() for p in (root / table).glob("part-*")) if (root / table).is_dir() else []


def _labels(n):
    def stage(at):
        table = Path(at) / "rankings"
        for i in range(n):
            (table / f"part-{i}").write_text(f"item-{i}")
        return {"added": n}
    return stage


def _table(root, *items):
    (root / "rankings").mkdir(parents=True)
    for i in items:
        (root / "rankings" / f"part-{i}").write_text(f"item-{i}")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "ds"
    _table(root, 100)
    (root / "images").mkdir()
    (root / "images" / "a.png").write_bytes(b"png")
    nested = root / "one-shot-2"  # a dataset root inside the root: neither copied nor replaced
    _table(nested, 200)
    (nested / "generations").mkdir()
    return root


def test_a_stage_commits_its_writes_and_leaves_no_copy(root):
    assert staged(str(root), _labels(3)) == {"added": 3}
    assert _rows(root) == ["item-0", "item-1", "item-100", "item-2"]
    assert not (root / STAGING).exists() and (root / "images" / "a.png").read_bytes() == b"png"
    assert _rows(root / "one-shot-2") == ["item-200"]


def test_a_stage_killed_before_its_commit_leaves_the_root_as_it_was_and_reruns_from_there(root):
    def killed(at):
        _labels(2)(at)
        raise KeyboardInterrupt  # stands for a SIGKILL: nothing after this line runs

    with pytest.raises(KeyboardInterrupt):
        staged(str(root), killed)
    assert _rows(root) == ["item-100"]  # the copy's rows never reached the root
    assert staged(str(root), _labels(3)) == {"added": 3}
    assert _rows(root) == ["item-0", "item-1", "item-100", "item-2"]


def test_a_commit_cut_short_is_finished_by_the_rerun(root, monkeypatch):
    import data.staging

    real, moved = _commit, []

    def killed_after_one_move(at, dst, names):
        real(at, dst, names[:1])  # the first entry moved, then the kill
        moved.append(names)
        raise KeyboardInterrupt

    monkeypatch.setattr(data.staging, "_commit", killed_after_one_move)
    with pytest.raises(KeyboardInterrupt):
        staged(str(root), _labels(3))
    assert json.loads((root / STAGING / COMMIT).read_text())["summary"] == {"added": 3}
    monkeypatch.setattr(data.staging, "_commit", real)
    never = []
    assert staged(str(root), lambda at: never.append(at)) == {"added": 3}  # the stage is not run again
    assert never == [] and moved == [["images", "rankings"]]
    assert _rows(root) == ["item-0", "item-1", "item-100", "item-2"]
    assert not (root / STAGING).exists() and not list(root.glob(".*.replaced"))
