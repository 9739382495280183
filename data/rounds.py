"""Rounds of the closed loop: collect -> reward -> fine-tune -> collect again.

Every generations row carries the ``round`` its image was made for (0: the first labeling round,
made by the base model).  A label, a ranking, a pair, a reward score or a selection belongs to the
round of its image (a ranking: of its first image; the labeling app ranks one round's images at a
time), so those tables carry no round column of their own: :func:`filter_rounds` joins them to
generations on ``image_id``.  Analysts filter the same way::

    from data import read_table
    labels = read_table("datasets/loop", "binary_labels", rounds="last:1")   # the newest round

A *rounds spec* (:func:`resolve_rounds`) says which rounds a stage reads: ``all``, ``last:N`` (the
N newest rounds that have images), or a comma list such as ``0,2``.
"""

from __future__ import annotations

import pandas as pd

from core.errors import UserError
from data.schemas import GENERATIONS, get_spec
from data.store import Store

ROUNDS_HELP = "all, last:N (the N newest rounds), or a comma list of round numbers such as 0,2"


def rounds_in(store: Store, generations: pd.DataFrame | None = None) -> list[int]:
    """The rounds that have images in the root, ascending (``generations``: the root's table when
    the caller has read it already)."""
    gens = store.to_pandas(GENERATIONS) if generations is None else generations
    return sorted({int(r) for r in gens["round"]})


def resolve_rounds(spec: str | int, available: list[int]) -> list[int]:
    """The rounds a rounds spec names, ascending; an error for a malformed spec or a named round
    with no images (``available``: the rounds that have images)."""
    text = str(spec).strip().lower()
    if text == "all":
        return list(available)
    if text.startswith("last:"):
        n = text[len("last:"):]
        if not n.isdigit() or int(n) < 1:
            raise UserError(f"rounds={spec!r}: last:N needs a whole number N >= 1.", f"write rounds as {ROUNDS_HELP}.")
        return list(available[-int(n):])
    try:
        wanted = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"rounds={spec!r} is not a rounds spec.", f"write rounds as {ROUNDS_HELP}.") from None
    if not wanted:
        raise UserError(f"rounds={spec!r} names no round.", f"write rounds as {ROUNDS_HELP}.")
    missing = [r for r in wanted if r not in available]
    if missing:
        raise UserError(f"round(s) {missing} have no images in this root (it has rounds {available}).",
                        "name rounds the root has, or generate the missing round first (make generate round=N).")
    return wanted


def image_rounds(store: Store, generations: pd.DataFrame | None = None) -> pd.Series:
    """image_id -> round, for every image of the root (``generations``: as in :func:`rounds_in`)."""
    gens = store.to_pandas(GENERATIONS) if generations is None else generations
    return pd.Series(gens["round"].to_numpy(), index=gens["image_id"].to_numpy(), name="round")


def filter_rounds(store: Store, table: str, frame: pd.DataFrame, rounds: list[int],
                  generations: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of ``frame`` (a table of ``store`` read as pandas) that belong to ``rounds``
    (``generations``: the root's whole table when the caller has read it already).

    Tables with a ``round`` column filter on it; tables keyed to images (labels, pairs, rewards) on
    their image's round (a pair: its first image's; both images of a pair share a prompt and a
    ranking, and the app ranks one round's images at a time); rankings on their first image's."""
    spec = get_spec(table)
    wanted = set(rounds)
    names = spec.schema.names
    if "round" in names:
        return frame[frame["round"].isin(wanted)]
    by_image = image_rounds(store, generations)
    if "image_id" in names:
        ids = frame["image_id"]
    elif "image_0" in names:
        ids = frame["image_0"]
    elif "image_ids" in names:
        ids = frame["image_ids"].map(lambda xs: xs[0] if len(xs) else None)
    else:
        raise UserError(f"table '{table}' has no round: its rows name no image.",
                        "read it without rounds=, or filter the tables its rows point to.")
    return frame[ids.map(by_image).isin(wanted).to_numpy()]
