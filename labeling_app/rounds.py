"""Which images a labeling round serves: the closed loop's rounds in the app.

A dataset root holds the images of every round (``generations.round``, :mod:`data.rounds`).  The
app, the simulated raters and the gold pool serve one round (``LabelConfig.round``; None: the
newest round with images), and within it, when the ``selections`` table has rows for that round
(:mod:`collect.selection` picks the images worth a rater's time), only the selected images: a
binary item per selected image, a ranking item per prompt from its selected images (2 or more).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.errors import UserError
from data.rounds import rounds_in
from data.schemas import GENERATIONS, SELECTIONS
from data.store import Store
from shapes.world import Prompt


@dataclass(frozen=True)
class ServedRound:
    round: int | None  # None: the root has no images yet
    images: pd.DataFrame  # the generations rows served (the round's, or its selected ones)
    images_in_round: int  # every image of the round, selected or not
    selected: bool  # the round has selections rows, so only those images are served


def served_round(store: Store, round: int | None, generations: pd.DataFrame | None = None) -> ServedRound:
    """The images round ``round`` serves (None: the newest round); ``generations``: the root's
    table when the caller has read it already.  A named round with no images is a UserError."""
    gens = store.to_pandas(GENERATIONS) if generations is None else generations
    have = rounds_in(store, gens)
    if round is None:
        if not have:
            return ServedRound(None, gens, 0, False)
        round = have[-1]  # the newest
    mine = gens[gens["round"] == round]
    if mine.empty:
        raise UserError(f"round {round} has no images in {store.root} (it has rounds {have}).",
                        f"pass round= one of {have}, or generate round {round} first "
                        f"(make generate ARGS=\"round={round} pipeline=<run>\").")
    selections = store.to_pandas(SELECTIONS)
    picked = selections[selections["round"] == round]["image_id"]
    if picked.empty:
        return ServedRound(round, mine, len(mine), False)
    return ServedRound(round, mine[mine["image_id"].isin(set(picked))], len(mine), True)


def round_signature(store: Store) -> tuple:
    """Changes when generations or selections get a new part (the app re-reads the round then)."""
    out = []
    for spec in (GENERATIONS, SELECTIONS):
        d = store.table_dir(spec)
        names = sorted(p.name for p in d.glob("part-*.parquet")) if d.is_dir() else []
        out += [len(names), names[-1] if names else ""]
    return tuple(out)


def shapes_prompts(images: pd.DataFrame) -> bool:
    """Whether every prompt of ``images`` (generations rows) is a shapes-world prompt, the ones
    the oracle and the packaged guidelines describe (no images: True, nothing to judge)."""
    for text in images["prompt"].unique():
        try:
            Prompt.parse(str(text))
        except UserError:
            return False
    return True
