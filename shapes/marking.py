"""Simulated region marks: what a simulated rater clicks on a shapes-world image it answers *bad*
(:func:`shapes.raters.click_marks` on the oracle's problem regions,
:func:`shapes.regions.problem_regions`).

:func:`rater_marks` is the one source of a simulated rater's marks.  The simulated raters give them
with each bad answer through the labeling app's write path (:mod:`labeling_app.simulate`);
:func:`simulate_marks` adds them afterwards to a round labelled without marks, as ``marks`` rows
(:data:`data.marks.MARKS`) straight to the table.  Both key each answer's clicks by its rater and
image (a rater answers an image once), from their own seeded stream, so the same labels give the
same marks whether marked while labelling or after, in whatever order they are read; an answer with
nothing marked gets no row, as in the app.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from core import seeds
from core.errors import UserError
from data.generations import load_image
from data.labels import current
from data.marks import MARKS
from data.schemas import BINARY_LABELS, GENERATIONS
from data.store import Store
from shapes.raters import MarkProfile, click_marks
from shapes.regions import ProblemRegions, problem_regions
from shapes.world import Prompt


def truth_regions(image, prompt: str) -> ProblemRegions | None:
    """The oracle's problem regions of ``image`` for ``prompt``; None for a prompt outside the
    shapes world (it has no oracle, so nothing to mark)."""
    try:
        parsed = Prompt.parse(prompt)
    except UserError:
        return None
    return problem_regions(image, parsed)


def rater_marks(truth: ProblemRegions, rater_id: str, image_id: str, seed: int = 0,
                profile: MarkProfile = MarkProfile()) -> tuple[list[tuple[float, float]], list[int]]:
    """The points and words rater ``rater_id`` marks on image ``image_id`` whose problem regions are
    ``truth``: drawn from their own stream keyed by rater and image, so they take nothing from the
    rater's answer noise (:class:`shapes.raters.SimulatedRater`) and do not depend on when they are
    drawn."""
    rng = seeds.rng(seed, seeds.Stream.SIMULATED_MARKS, seeds.text_key(rater_id), seeds.text_key(image_id))
    return click_marks(truth.mask, truth.words, rng, profile)


def simulated_mark_rows(store: Store, profile: MarkProfile = MarkProfile(), seed: int = 0,
                        skip_marked: bool = True) -> list[dict]:
    """``marks`` rows for the current bad answers of ``store`` (those already marked are left out
    with ``skip_marked``).  Images of prompts outside the shapes world are skipped."""
    labels = current(store, BINARY_LABELS.name).to_pandas()
    bad = labels[labels["label"] == "bad"]
    if skip_marked and store.exists(MARKS):
        bad = bad[~bad["label_id"].isin(set(store.read(MARKS)["label_id"].to_pylist()))]
    if bad.empty:
        return []
    gens = store.to_pandas(GENERATIONS).set_index("image_id", drop=False)
    regions: dict[str, ProblemRegions | None] = {}
    rows = []
    now = datetime.now(timezone.utc)
    for r in bad.sort_values("label_id").itertuples():
        if r.image_id not in regions:
            g = gens.loc[r.image_id]
            regions[r.image_id] = truth_regions(load_image(store.root, g), g["prompt"])
        truth = regions[r.image_id]
        if truth is None:
            continue
        points, words = rater_marks(truth, r.rater_id, r.image_id, seed, profile)
        if points or words:
            rows.append(dict(label_id=r.label_id, image_id=r.image_id, prompt_id=r.prompt_id,
                             rater_id=r.rater_id, points=[{"x": x, "y": y} for x, y in points],
                             words=[int(w) for w in words], created_at=now))
    return rows


def simulate_marks(store: Store, profile: MarkProfile = MarkProfile(), seed: int = 0) -> int:
    """Write :func:`simulated_mark_rows` to the ``marks`` table; the number of rows written."""
    rows = simulated_mark_rows(store, profile, seed)
    if rows:
        store.append(MARKS, rows)
    return len(rows)


def oracle_masks(store: Store, image_ids) -> dict[str, np.ndarray]:
    """The oracle's exact problem masks (H, W bool) of ``image_ids`` of ``store`` (evaluation
    only); images of prompts outside the shapes world are left out."""
    gens = store.to_pandas(GENERATIONS).set_index("image_id", drop=False)
    out = {}
    for iid in image_ids:
        g = gens.loc[iid]
        truth = truth_regions(load_image(store.root, g), g["prompt"])
        if truth is not None:
            out[iid] = truth.mask
    return out
