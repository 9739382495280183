"""Labels as they stand now: the label tables minus the rows raters took back (undo)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from data.schemas import RETRACTABLE, RETRACTIONS, get_spec
from data.store import Store


def retract(store: Store, table: str, row_id: str, rater_id: str) -> None:
    """Take back one row of ``binary_labels`` or ``rankings`` (durable on return)."""
    store.append(RETRACTIONS, [dict(
        retraction_id=uuid.uuid4().hex, target_table=table, target_id=row_id, rater_id=rater_id,
        created_at=datetime.now(timezone.utc))])


def retracted_ids(store: Store, table: str) -> set[str]:
    r = store.read(RETRACTIONS)
    return set(pc.filter(r["target_id"], pc.equal(r["target_table"], table)).to_pylist())


def current(store: Store, table: str) -> pa.Table:
    """Every row of a label table that has not been retracted (the input of reward training)."""
    spec = get_spec(table)
    rows = store.read(spec)
    if spec.name not in RETRACTABLE:
        return rows
    gone = retracted_ids(store, spec.name)
    if not gone:
        return rows
    key = spec.key[0]
    return rows.filter(pc.invert(pc.is_in(rows[key], value_set=pa.array(sorted(gone)))))
