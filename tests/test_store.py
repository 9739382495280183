import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from core.errors import DataError
from data import Store, read_table
from data.conform import from_rows
from data.schemas import BINARY_LABELS
from data.store import PART_GLOB
from test_schemas import label_row

ROOT = Path(__file__).resolve().parents[1]


def labels(prefix: str, n: int) -> list[dict]:
    return [label_row(label_id=f"{prefix}-{i}") for i in range(n)]


def test_append_and_read_back(tmp_path):
    store = Store(tmp_path)
    assert store.read("binary_labels").num_rows == 0  # never written: empty, not an error
    assert store.append("binary_labels", labels("a", 3)) == 3
    assert store.append("binary_labels", pd.DataFrame(labels("b", 2))) == 2
    table = store.read("binary_labels")
    assert table.schema.equals(BINARY_LABELS.schema)
    assert sorted(table["label_id"].to_pylist()) == ["a-0", "a-1", "a-2", "b-0", "b-1"]


def test_plain_pandas_and_pyarrow_open_the_same_files(tmp_path):
    store = Store(tmp_path)
    store.append("binary_labels", labels("a", 4))
    (tmp_path / "binary_labels" / "_tmp-leftover.parquet").write_bytes(b"half a file")
    assert len(pd.read_parquet(tmp_path / "binary_labels")) == 4
    assert pads.dataset(tmp_path / "binary_labels").to_table().num_rows == 4
    assert len(read_table(tmp_path, "binary_labels")) == 4


def test_duplicates_by_id_are_dropped_on_read(tmp_path):
    store = Store(tmp_path)
    store.append("binary_labels", labels("a", 3))
    store.append("binary_labels", labels("a", 2))  # a retried write of the same rows
    assert store.read("binary_labels").num_rows == 3


def test_rejected_append_writes_nothing(tmp_path):
    store = Store(tmp_path)
    store.append("binary_labels", labels("a", 2))
    with pytest.raises(DataError, match="not one of"):
        store.append("binary_labels", labels("b", 2) + [label_row(label_id="x", label="meh")])
    assert store.read("binary_labels").num_rows == 2


def test_compaction_keeps_every_row_once(tmp_path):
    store = Store(tmp_path, compact_every=0)
    for i in range(10):
        store.append("binary_labels", labels(f"p{i}", 3))
    store.append("binary_labels", labels("p0", 3))
    assert store.compact("binary_labels") == 11
    assert len(list((tmp_path / "binary_labels").glob("part-*.parquet"))) == 1
    assert store.read("binary_labels").num_rows == 30


def test_a_merge_cut_short_keeps_the_groups_it_finished(tmp_path, monkeypatch):
    """#44.13: a merge killed part-way (a restart, a crash) keeps every group of ``merge_parts``
    it finished, so the next run carries on instead of starting over on a longer list."""
    store = Store(tmp_path, compact_every=0, merge_parts=8)
    for i in range(40):
        store.append("binary_labels", labels(f"p{i}", 1))
    folder = store.table_dir("binary_labels")
    read_part, reads = Store._read_part, []

    def killed_at_the_20th_read(spec, path):
        reads.append(path)
        if len(reads) == 20:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this point runs
        return read_part(spec, path)

    monkeypatch.setattr(Store, "_read_part", staticmethod(killed_at_the_20th_read))
    with pytest.raises(KeyboardInterrupt):
        store.compact("binary_labels")
    monkeypatch.undo()
    assert len(list(folder.glob(PART_GLOB))) == 40 - 2 * 8 + 2  # two groups of 8 merged
    assert store.read("binary_labels").num_rows == 40
    assert store.compact("binary_labels") == 26
    assert len(list(folder.glob(PART_GLOB))) == 1 and store.read("binary_labels").num_rows == 40


@pytest.mark.slow
def test_eight_threads_append_one_thousand_rows_each(tmp_path):
    store = Store(tmp_path)
    errors = []

    def writer(t: int):
        try:
            for i in range(1000):
                store.append("binary_labels", [label_row(label_id=f"t{t}-{i}", rater_id=f"r{t}")])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = store.read("binary_labels")
    assert table.num_rows == 8000
    assert len(set(table["label_id"].to_pylist())) == 8000


@pytest.mark.slow
def test_concurrent_processes_and_a_reader(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from data import Store
        from test_schemas import label_row
        store = Store(sys.argv[1], compact_every=8)
        for i in range(150):
            store.append("binary_labels", [label_row(label_id=sys.argv[2] + str(i))])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"w{k}-"]) for k in range(3)]
    reader = Store(tmp_path)
    seen = 0
    while any(p.poll() is None for p in procs):
        n = reader.read("binary_labels").num_rows  # must never fail or go backwards mid-write
        assert n >= seen
        seen = n
    assert all(p.returncode == 0 for p in procs)
    assert reader.read("binary_labels").num_rows == 450


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[3] + "/tests")
    from data import Store
    from test_schemas import label_row
    store = Store(sys.argv[1], compact_every=16)
    i = 0
    while True:
        rows = [label_row(label_id=f"{sys.argv[2]}-{i}-{j}") for j in range(1 + i % 5)]
        store.append("binary_labels", rows)
        print(" ".join(r["label_id"] for r in rows), flush=True)  # acknowledged
        i += 1
""")


@pytest.mark.parametrize("after_acks", [7, 60, 150])
def test_sigkilled_writer_loses_no_acknowledged_row(tmp_path, after_acks):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), f"k{after_acks}", str(ROOT)],
        stdout=subprocess.PIPE, text=True)
    acked = []
    for _ in range(after_acks):
        acked.extend(proc.stdout.readline().split())
    os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-write, mid-rename, mid-compaction
    proc.wait()
    acked.extend(proc.stdout.read().split())  # lines it flushed before dying count as acks too
    stored = set(Store(tmp_path).read("binary_labels")["label_id"].to_pylist())
    assert set(acked) <= stored
    assert len(pd.read_parquet(tmp_path / "binary_labels")) >= len(stored)


def test_corrupt_file_names_the_file(tmp_path):
    store = Store(tmp_path)
    store.append("binary_labels", labels("a", 2))
    bad = tmp_path / "binary_labels" / "part-00000000000000000001-x.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"part-00000000000000000001-x.parquet: not a readable Parquet"):
        store.read("binary_labels")


def test_wrong_schema_file_names_the_file_and_the_column(tmp_path):
    (tmp_path / "binary_labels").mkdir()
    bad = tmp_path / "binary_labels" / "part-00000000000000000002-y.parquet"
    pq.write_table(pa.table({"label_id": ["a"], "label": ["good"]}), bad)
    with pytest.raises(DataError, match=r"part-00000000000000000002-y.parquet.*missing column 'image_id'"):
        read_table(tmp_path, "binary_labels")


def test_group_commit_error_reaches_every_waiting_caller(tmp_path, monkeypatch):
    store = Store(tmp_path)
    import data.store as store_module

    def broken(*args, **kwargs):
        time.sleep(0.01)
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_write_durably", broken)
    errors = []

    def writer(i):
        try:
            store.append("binary_labels", [label_row(label_id=str(i))])
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6


def test_from_rows_helper_matches_store_schema():
    assert from_rows(BINARY_LABELS, labels("z", 1)).schema.equals(BINARY_LABELS.schema)


def test_retracted_labels_drop_out_of_current(tmp_path):
    from data.labels import current, retract

    store = Store(tmp_path)
    store.append("binary_labels", labels("a", 3))
    retract(store, "binary_labels", "a-1", "r1")
    assert sorted(current(store, "binary_labels")["label_id"].to_pylist()) == ["a-0", "a-2"]
    assert store.read("binary_labels").num_rows == 3  # the raw table keeps the history
    with pytest.raises(DataError, match="can be retracted"):
        retract(store, "generations", "x", "r1")
