"""Rounds of the closed loop in the data: the round columns, a version-1 root read and migrated,
round filters on every image-keyed table, and bad rounds specs."""

import pyarrow.parquet as pq
import pytest

from core.errors import UserError
from data import Store, read_table
from data.conform import from_rows
from data.rounds import resolve_rounds, rounds_in
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS, SCHEMA_VERSION, SELECTIONS
from data.store import PART_GLOB, migrate
from test_schemas import generation_row, label_row, ranking_row, selection_row


def _root(tmp_path):
    store = Store(tmp_path)
    store.append(GENERATIONS, [generation_row(image_id=f"i{r}{k}", round=r, image_path=f"images/i{r}{k}.png")
                               for r in (0, 1, 2) for k in range(2)])
    store.append(BINARY_LABELS, [label_row(label_id=f"l{r}", image_id=f"i{r}0") for r in (0, 1, 2)])
    store.append(RANKINGS, [ranking_row(ranking_id=f"k{r}", image_ids=[f"i{r}0", f"i{r}1"], ranks=[1, 2])
                            for r in (0, 1, 2)])
    store.append(SELECTIONS, [selection_row(image_id="i20", round=2)])
    return store


def test_rounds_filter_every_image_keyed_table(tmp_path):
    _root(tmp_path)
    assert rounds_in(Store(tmp_path)) == [0, 1, 2]
    assert sorted(read_table(tmp_path, "binary_labels", rounds="last:2")["image_id"]) == ["i10", "i20"]
    assert list(read_table(tmp_path, "rankings", rounds="0")["ranking_id"]) == ["k0"]
    assert sorted(read_table(tmp_path, "generations", rounds="0,2")["round"].unique()) == [0, 2]
    assert list(read_table(tmp_path, "selections", rounds="all")["image_id"]) == ["i20"]
    assert len(read_table(tmp_path, "binary_labels")) == 3  # no rounds: every row


@pytest.mark.parametrize("spec, message", [
    ("5", r"round\(s\) \[5\] have no images"), ("last:0", "last:N"), ("two", "not a rounds spec"), (",", "names no round"),
])
def test_bad_rounds_specs_are_one_clear_error(spec, message):
    with pytest.raises(UserError, match=message):
        resolve_rounds(spec, [0, 1])


def test_a_version_1_root_reads_as_round_0_and_migrates(tmp_path):
    # a part as version 1 wrote it: no round, model_fingerprint or run, version 1 in its metadata
    v2 = from_rows(GENERATIONS, [generation_row()])
    v1 = v2.drop_columns(["round", "model_fingerprint", "run"])
    v1 = v1.replace_schema_metadata({**v1.schema.metadata, b"schema_version": b"1"})
    (tmp_path / "generations").mkdir()
    pq.write_table(v1, tmp_path / "generations" / "part-00000000000000000001-old.parquet")
    assert read_table(tmp_path, "generations")[["image_id", "round"]].to_dict("records") == [{"image_id": "i1", "round": 0}]
    assert migrate(tmp_path) == {"generations": 1, "marks": 0}  # a root older than the marks table gets it empty
    part, = (tmp_path / "generations").glob(PART_GLOB)
    on_disk = pq.read_table(part)  # what DuckDB or pyarrow sees, without this package
    assert on_disk.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert on_disk.column("round").to_pylist() == [0]
    assert migrate(tmp_path) == {}  # nothing left to migrate


def test_negative_round_is_refused():
    from core.errors import DataError

    with pytest.raises(DataError, match="negative"):
        from_rows(GENERATIONS, [generation_row(round=-1)])


def test_migrate_checks_every_part_before_rewriting_any(tmp_path, capsys):
    """#58.6: a truncated part (in a table after one that needs migrating) is one error line naming
    the file, and no part is rewritten; without it the same root migrates."""
    from pipelines.cli import run
    from pipelines.migrate import main

    v2 = from_rows(GENERATIONS, [generation_row()])
    v1 = v2.drop_columns(["round", "model_fingerprint", "run"])
    v1 = v1.replace_schema_metadata({**v1.schema.metadata, b"schema_version": b"1"})
    (tmp_path / "generations").mkdir()
    old = tmp_path / "generations" / "part-00000000000000000001-old.parquet"
    pq.write_table(v1, old)
    Store(tmp_path).append(BINARY_LABELS, [label_row(label_id="l1", image_id="i1")])
    part, = (tmp_path / "binary_labels").glob(PART_GLOB)
    whole = part.read_bytes()
    part.write_bytes(whole[: len(whole) // 2])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert run(main, [f"root={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(part) in lines[0], lines
    assert "Traceback" not in lines[0] and "not a readable Parquet file" in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing rewritten
    part.write_bytes(whole)
    assert run(main, [f"root={tmp_path}"]) == 0
    assert pq.read_schema(old).metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
