"""Background merging of the label tables' small part files while the app serves a round."""

from __future__ import annotations

import threading

from data.marks import MARKS
from data.schemas import BINARY_LABELS, RANKINGS, RETRACTIONS
from data.store import Store

LABEL_TABLES = (BINARY_LABELS.name, RANKINGS.name, RETRACTIONS.name, MARKS.name)
"""The tables the app appends to while it serves a round: one part file per answer (a bad answer
with marks adds a ``marks`` part before its label's), so each is merged here."""


def merge_leftovers(store: Store, tables: tuple[str, ...] = LABEL_TABLES) -> None:
    """Merge the parts earlier runs left, before the app reads the round at start-up.

    Reading those parts costs about as much as merging them, and a run cut short (a crash, a
    restart) before the background thread's first merge would otherwise leave them all behind
    for the next start, which then starts slower and leaves more."""
    for table in tables:
        store.compact(table, block=False)


class Compactor(threading.Thread):
    """Merges the label tables' small part files in the background.

    The store merges inline when an append pushes a table past ``compact_every`` parts, so one
    unlucky rater would wait for the merge (~0.3 s for 256 parts).  The app opens its store with
    ``compact_every=0`` and lets this thread merge every ``every_s`` seconds instead.
    """

    def __init__(self, store: Store, tables: tuple[str, ...] = LABEL_TABLES,
                 every_s: float = 20.0, min_parts: int = 64):
        super().__init__(daemon=True, name="label-compactor")
        self.store, self.tables, self.every_s, self.min_parts = store, tables, every_s, min_parts
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.every_s):
            for table in self.tables:
                d = self.store.table_dir(table)
                if d.is_dir() and sum(1 for _ in d.glob("part-*.parquet")) >= self.min_parts:
                    try:
                        self.store.compact(table, block=False)
                    except Exception as e:  # noqa: BLE001 - a failed merge loses nothing; retry later
                        print(f"warning: compacting {table} failed ({e}); will retry", flush=True)
