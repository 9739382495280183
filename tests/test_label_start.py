"""``make label`` on a root with a bad part (issue 58): one error line naming the file, and nothing
rewritten first (the start-up merge of the label tables comes after every check)."""

from __future__ import annotations

from data import Store
from data.schemas import BINARY_LABELS, GENERATIONS
from pipelines.cli import run
from tests.labeling_server import make_raters, make_round
from tests.test_bad_input_cli import one_error_line, tree
from tests.test_schemas import label_row


def round_with_label_parts(tmp_path):
    """A round with three binary-label parts (what a start would merge) and a lead rater."""
    root = tmp_path / "round"
    make_round(root, n_prompts=2, per_prompt=2, hostile=False)
    store = Store(root)
    for i in range(3):
        store.append(BINARY_LABELS, [label_row(label_id=f"l{i}", image_id=f"i{i}")])
    return root, store, make_raters(root / "raters.json", ["lead"], admins=("lead",))


def test_label_refuses_a_truncated_generations_part_before_merging_the_labels(tmp_path, capsys):
    from pipelines.label import main

    root, store, raters = round_with_label_parts(tmp_path)
    part = sorted((root / "generations").glob("part-*.parquet"))[-1]
    part.write_bytes(part.read_bytes()[:200])
    before = tree(root)
    assert run(main, [f"root={root}", f"raters_file={raters.path}"]) == 2
    one_error_line(capsys, str(part), "not a readable Parquet file")
    assert tree(root) == before  # the three label parts are still three, nothing else written


def _files(root) -> dict:
    """Every file under ``root`` with its modification time: a rewrite or a merge changes it."""
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_label_refuses_a_bad_gold_file_before_merging_the_labels(tmp_path, capsys):
    """Issue 74 item 6: the gold file is checked before the start-up merge rewrites the label tables."""
    from pipelines.label import main

    root, store, raters = round_with_label_parts(tmp_path)
    image_id = store.to_pandas(GENERATIONS)["image_id"].iloc[0]
    gold = tmp_path / "gold.csv"
    gold.write_text(f"image_id,answer\n{image_id},maybe\n")
    parts = sorted(p.name for p in (root / BINARY_LABELS.name).glob("part-*.parquet"))
    before, stamps = tree(root), _files(root)
    assert run(main, [f"root={root}", f"raters_file={raters.path}", f"gold.file={gold}"]) == 2
    one_error_line(capsys, str(gold), "has answers ['maybe']")
    assert sorted(p.name for p in (root / BINARY_LABELS.name).glob("part-*.parquet")) == parts
    assert tree(root) == before and _files(root) == stamps  # nothing merged, no gold table, no configs/
