"""A durable, append-only Parquet store shared by concurrent writers.

Layout: ``<root>/<table>/part-<ns timestamp>-<uuid>.parquet``, one file per append.  Plain
``pandas.read_parquet(<root>/<table>)`` and ``pyarrow.dataset.dataset(<root>/<table>)`` read it.

Why one file per append: an open ``ParquetWriter`` used as a log is unreadable after a crash (the
footer is written at close), and a half-written part breaks reading the whole directory.  So each
append writes a temporary file (:func:`temp_path`: a hidden name that does not end in ``.parquet``,
so no common reader takes it for part of the table: pandas, pyarrow, ``datasets`` and DuckDB's
``*.parquet`` glob all pass it by), fsyncs it, renames it into place with ``os.replace`` (atomic on
POSIX) and fsyncs the directory.  When :meth:`Store.append` returns, the rows survive SIGKILL and power loss; before it
returns, a reader sees either none of them or all of them.

Appends from threads of one process (Gradio runs listeners in threads) are group-committed: the
first thread in writes every batch that is waiting as one file, one fsync, while the others wait
for it; under load that turns N fsyncs into one without delaying a lone writer.

Many small files read slowly, so writers merge them (:meth:`Store.compact`) once a table holds more
than ``compact_every`` parts.  A merge writes the merged file durably *before* deleting its inputs,
so a crash in between leaves rows twice, never zero times; readers drop rows repeated under a
table's key (:class:`data.schemas.TableSpec.key`).  It merges ``merge_parts`` files at a time, each
group kept as soon as it is written, so a process killed mid-merge keeps the groups it finished and
the next one carries on from there instead of starting over on an ever longer list.  Merges are
serialised by an ``flock`` on ``<root>/<table>/.compact.lock``; appends never wait for them.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import DataError
from data.conform import conform, from_rows
from data.schemas import SCHEMA_VERSION, TABLES, TableSpec, get_spec

PART_GLOB = "part-*.parquet"
TMP_PREFIX = ".tmp-"
LEGACY_TMP_PREFIX = "_tmp-"  # what earlier versions named their temporary files
STALE_TMP_SECONDS = 3600.0
MERGE_PARTS = 256


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: Path) -> Path:
    """Where to write ``final`` before renaming it into place: hidden (a leading dot, which pandas,
    pyarrow and ``datasets`` skip) and ending in ``.tmp`` rather than the final suffix (so globs
    such as DuckDB's ``*.parquet`` or an image loader's ``*.png`` do not match it either)."""
    return final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}.tmp")


def write_parquet(table: pa.Table, where) -> None:
    """Write ``table`` as one Parquet file (a path or a binary file object).

    A table without rows is written without any row group: pyarrow would otherwise write one
    empty group, which ``datasets`` cannot read (it sizes its batches by the first group's rows).
    """
    if table.num_rows:
        pq.write_table(table, where, compression="zstd")
    else:
        with pq.ParquetWriter(where, table.schema, compression="zstd"):
            pass


def _write_durably(table: pa.Table, directory: Path, name: str) -> Path:
    """Write ``table`` to ``directory/name`` so that it is either absent or complete, then fsync."""
    final = directory / name
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as f:
            write_parquet(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return final


def _new_part_name(ts_ns: int | None = None) -> str:
    ts_ns = time.time_ns() if ts_ns is None else ts_ns
    return f"part-{ts_ns:020d}-{uuid.uuid4().hex}.parquet"


def _dedupe(table: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """Keep the first row of each key (rows are in part-file order, i.e. oldest first)."""
    if table.num_rows == 0:
        return table
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    firsts = (
        table.select(list(key)).append_column("__row", idx)
        .group_by(list(key), use_threads=False).aggregate([("__row", "min")])
        .column("__row_min").to_numpy()
    )
    if len(firsts) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(firsts)))


class _Batch:
    """Rows of one append waiting for a group commit."""

    __slots__ = ("table", "done", "error")

    def __init__(self, table: pa.Table):
        self.table = table
        self.done = False
        self.error: BaseException | None = None


class _GroupCommit:
    """Leader/follower group commit of one table directory within one process."""

    def __init__(self):
        self.cond = threading.Condition()
        self.queue: list[_Batch] = []
        self.writing = False

    def commit(self, directory: Path, table: pa.Table) -> None:
        batch = _Batch(table)
        with self.cond:
            self.queue.append(batch)
            while self.writing and not batch.done:
                self.cond.wait()
            if batch.done:
                if batch.error is not None:
                    raise batch.error
                return
            self.writing = True  # this thread leads: write everything queued, own batch included
        try:
            while True:
                with self.cond:
                    group, self.queue = self.queue, []
                    if not group:
                        self.writing = False
                        self.cond.notify_all()
                        break
                error = None
                try:
                    data = group[0].table if len(group) == 1 else pa.concat_tables([b.table for b in group])
                    _write_durably(data, directory, _new_part_name())
                except BaseException as e:  # every batch of the group failed; each caller raises
                    error = e
                with self.cond:
                    for b in group:
                        b.done, b.error = True, error
                    self.cond.notify_all()
        finally:
            with self.cond:
                if self.writing:
                    self.writing = False
                    self.cond.notify_all()
        if batch.error is not None:
            raise batch.error


class Store:
    """Tables of one dataset root.  Thread-safe and multi-process-safe without locks on append."""

    def __init__(self, root: str | os.PathLike, compact_every: int = 256, merge_parts: int = MERGE_PARTS):
        if merge_parts < 2:
            raise ValueError(f"merge_parts={merge_parts}: a merge needs at least 2 parts")
        self.root = Path(root)
        self.compact_every = compact_every
        self.merge_parts = merge_parts
        self._commits: dict[str, _GroupCommit] = {}
        self._commits_lock = threading.Lock()

    def table_dir(self, table: str | TableSpec) -> Path:
        return self.root / get_spec(table).name

    # -- writing ---------------------------------------------------------------------------

    def append(self, table: str | TableSpec, rows: list[dict] | pa.Table | pd.DataFrame) -> int:
        """Validate ``rows`` against the table's schema and store them durably.

        Returns the number of rows written.  When this returns, the rows are on disk for good;
        if it raises, none of them were written.
        """
        spec = get_spec(table)
        data = self._to_table(spec, rows)
        if data.num_rows == 0:
            return 0
        directory = self.table_dir(spec)
        directory.mkdir(parents=True, exist_ok=True)
        with self._commits_lock:
            group = self._commits.setdefault(spec.name, _GroupCommit())
        group.commit(directory, data)
        if self.compact_every and self._count_parts(directory) > self.compact_every:
            self.compact(spec, block=False)
        return data.num_rows

    @staticmethod
    def _to_table(spec: TableSpec, rows) -> pa.Table:
        if isinstance(rows, pa.Table):
            return conform(spec, rows, f"append to '{spec.name}'")
        if isinstance(rows, pd.DataFrame):
            return conform(spec, pa.Table.from_pandas(rows, preserve_index=False),
                           f"append to '{spec.name}'")
        return from_rows(spec, list(rows), f"append to '{spec.name}'")

    @staticmethod
    def _count_parts(directory: Path) -> int:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.startswith("part-") and e.name.endswith(".parquet"))

    @contextmanager
    def _compact_lock(self, directory: Path, block: bool) -> Iterator[bool]:
        with open(directory / ".compact.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def compact(self, table: str | TableSpec, block: bool = True) -> int:
        """Merge a table's parts into one file; return how many parts were merged.

        Parts are merged ``merge_parts`` at a time (then the merged files, and so on), each group
        durable before the next starts, so a merge cut short keeps the groups it finished.  Safe
        against concurrent appends (new parts are simply not merged this time) and against
        SIGKILL at any point (see the module docstring).  With ``block=False`` it returns 0 at
        once if another process is already merging.
        """
        spec = get_spec(table)
        directory = self.table_dir(spec)
        if not directory.is_dir():
            return 0
        with self._compact_lock(directory, block) as got:
            if not got:
                return 0
            self._remove_stale_tmp(directory)
            parts = sorted(directory.glob(PART_GLOB))
            merged = len(parts) if len(parts) >= 2 else 0
            while len(parts) >= 2:
                # Consecutive groups in name order, each merged file named after its oldest input,
                # keep the files in the order they were written ("first row wins" is unchanged).
                groups = [parts[i:i + self.merge_parts] for i in range(0, len(parts), self.merge_parts)]
                parts = [self._merge(spec, directory, g) if len(g) > 1 else g[0] for g in groups]
            return merged

    def _merge(self, spec: TableSpec, directory: Path, parts: list[Path]) -> Path:
        """Merge ``parts`` (consecutive in name order) into one file that sorts where the first did."""
        merged = _dedupe(pa.concat_tables([self._read_part(spec, p) for p in parts]), spec.key)
        first_ts = int(parts[0].name.split("-")[1])
        path = _write_durably(merged, directory, _new_part_name(first_ts))
        for p in parts:
            p.unlink(missing_ok=True)
        fsync_dir(directory)
        return path

    @staticmethod
    def _remove_stale_tmp(directory: Path) -> None:
        # A writer killed between creating and renaming its temp file leaves it behind; readers
        # ignore it, and once it is old enough no live writer can still own it.
        now = time.time()
        for tmp in [*directory.glob(TMP_PREFIX + "*"), *directory.glob(LEGACY_TMP_PREFIX + "*")]:
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _read_part(spec: TableSpec, path: Path) -> pa.Table:
        try:
            raw = pq.read_table(path)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"{path}: not a readable Parquet file ({e}).",
                "move the file out of the table folder (the store never leaves partial files "
                "under a part- name, so it came from elsewhere) or restore it from a backup.",
            ) from None
        return conform(spec, raw, str(path))

    def read(self, table: str | TableSpec) -> pa.Table:
        """All rows of a table, validated, with rows repeated under the key dropped.

        A table that was never written reads as empty.  Raises DataError naming the file for a
        corrupt file, a missing column or a wrong type.
        """
        spec = get_spec(table)
        directory = self.table_dir(spec)
        done: dict[str, pa.Table] = {}
        for _ in range(1000):
            vanished = False
            parts = sorted(directory.glob(PART_GLOB)) if directory.is_dir() else []
            for p in parts:
                if p.name not in done:
                    try:
                        done[p.name] = self._read_part(spec, p)
                    except FileNotFoundError:
                        # A merge removed it after we listed it.  Its rows are in the merged file,
                        # written before the removal, which the next listing shows; rows read
                        # twice that way are dropped by the key.
                        vanished = True
            if not vanished:
                break
        else:
            raise DataError(f"{directory}: the file list kept changing while reading.",
                            "retry; if it persists, stop the processes that are compacting it.")
        if not done:
            return spec.schema.empty_table()
        return _dedupe(pa.concat_tables([done[name] for name in sorted(done)]), spec.key)

    def to_pandas(self, table: str | TableSpec) -> pd.DataFrame:
        return self.read(table).to_pandas()

    def exists(self, table: str | TableSpec) -> bool:
        directory = self.table_dir(table)
        return directory.is_dir() and any(directory.glob(PART_GLOB))


def migrate(root: str | os.PathLike) -> dict[str, int]:
    """Rewrite every table of a root in the current schema version (``make migrate``): an older
    part reads with the defaults of the columns added since (:attr:`TableSpec.defaults`) and is
    replaced, atomically and under its own name, by those rows with every column; a table added
    since the root was written (:attr:`TableSpec.since`) gets an empty part.  Returns the rows per
    table migrated (0 for a table it added).

    Every part of every table is read and checked first: a bad one is a DataError naming it, raised
    before any part is rewritten.  Reading never needs this; it makes the files on disk current
    for other readers (DuckDB, an analyst's pyarrow), which see the files as written."""
    store, plan, out = Store(root), [], {}
    root_version = SCHEMA_VERSION
    for name, spec in TABLES.items():
        directory = store.table_dir(spec)
        old = []
        for p in sorted(directory.glob(PART_GLOB)) if directory.is_dir() else []:
            try:
                store._read_part(spec, p)  # raises DataError naming the file
                version = _part_version(p)
                root_version = min(root_version, version)
                if version < SCHEMA_VERSION:
                    old.append(p)
            except FileNotFoundError:
                pass  # merged away meanwhile: the merged part is written in the current version
        if old:
            plan.append((name, spec, directory, old))
    for name, spec, directory, old in plan:
        rows = 0
        with store._compact_lock(directory, block=True):
            for p in old:
                try:
                    table = store._read_part(spec, p)
                except FileNotFoundError:
                    continue  # merged away since the check (merges write the current version)
                rows += table.num_rows
                _write_durably(table, directory, p.name)  # same name: same place in the read order
        out[name] = rows
    # Tables added since the root was written: an empty part each (reading never needs it).
    for name, spec in TABLES.items():
        if spec.since > root_version and not store.exists(spec):
            directory = store.table_dir(spec)
            directory.mkdir(parents=True, exist_ok=True)
            _write_durably(spec.schema.empty_table(), directory, _new_part_name())
            out[name] = 0
    return out


def _part_version(path: Path) -> int:
    meta = pq.read_schema(path).metadata or {}
    return int(meta.get(b"schema_version", b"1"))
