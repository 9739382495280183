"""The analysts' entry point, :func:`read_table`: one table of a dataset root as pandas.

It sits above the store, the rounds and the labels (it uses all three), so none of them imports it
back: ``from data import read_table`` is the way in.
"""

from __future__ import annotations

import os

import pandas as pd

from data.labels import current as current_rows, retracted_ids
from data.marks import MARKS, read_marks
from data.rounds import filter_rounds, resolve_rounds, rounds_in
from data.schemas import BINARY_LABELS, GENERATIONS, RETRACTABLE, get_spec
from data.store import Store


def read_table(root: str | os.PathLike, table: str, rounds: str | int | None = None, *,
               current: bool = True, gold: bool = False) -> pd.DataFrame:
    """One table of a dataset root as a pandas DataFrame: the rows as they stand now.

    >>> from data import read_table
    >>> labels = read_table("datasets/shapes", "binary_labels")        # current answers, gold items out
    >>> every = read_table("datasets/shapes", "binary_labels", current=False, gold=True)  # every row written
    >>> newest = read_table("datasets/loop", "binary_labels", rounds="last:1")

    Rows are validated against :mod:`data.schemas` and de-duplicated by the table's key.

    ``current`` (default True): leave out the answers raters took back (undo: a ``retractions``
    row) from ``binary_labels`` and ``rankings``, and the ``marks`` of a taken-back answer, as
    :func:`data.labels.current` does for the reward stage and the export.  ``gold`` (default
    False): keep the answers to hidden gold items (``is_gold``) in ``binary_labels`` and their
    ``marks``; an analyst's per-rater counts leave these rater checks out unless asked.  Other
    tables have no such rows, so both keys leave them as stored.

    ``rounds`` keeps the rows of some rounds of the closed loop (:mod:`data.rounds`: ``all``,
    ``last:N`` or a list such as ``0,2``; a round with no images is an error).
    """
    store = Store(root)
    spec = get_spec(table)
    if current and spec.name in RETRACTABLE:
        frame = current_rows(store, spec.name).to_pandas()
    elif spec.name == MARKS.name:
        frame = read_marks(store).to_pandas()  # word indices checked against the prompts
    else:
        frame = store.to_pandas(spec)
    if spec.name == BINARY_LABELS.name and not gold:
        frame = frame[~frame["is_gold"].astype(bool)].reset_index(drop=True)
    elif spec.name == MARKS.name and (current or not gold):
        frame = _marks_of_labels(store, frame, current=current, gold=gold)
    if rounds is None:
        return frame
    gens = frame if spec.name == GENERATIONS.name else store.to_pandas(GENERATIONS)
    return filter_rounds(store, spec.name, frame, resolve_rounds(rounds, rounds_in(store, gens)), gens)


def _marks_of_labels(store: Store, marks: pd.DataFrame, *, current: bool, gold: bool) -> pd.DataFrame:
    """The marks whose answer is kept: a mark row belongs to one binary answer (``label_id``)."""
    drop: set[str] = set()
    if current:
        drop |= retracted_ids(store, BINARY_LABELS.name)
    if not gold:
        labels = store.read(BINARY_LABELS)
        drop |= {lid for lid, g in zip(labels["label_id"].to_pylist(), labels["is_gold"].to_pylist()) if g}
    if not drop:
        return marks
    return marks[~marks["label_id"].isin(drop)].reset_index(drop=True)
