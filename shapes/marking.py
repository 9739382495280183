"""Simulated region marks for a labelled shapes-world round: every current *bad* answer gets the
marks its rater would click (:func:`shapes.raters.click_marks` on the oracle's problem regions,
:func:`shapes.regions.problem_regions`), as ``marks`` rows (:data:`data.marks.MARKS`).

The rows go straight to the table (``Store.append``), not through the labeling app; each answer's
clicks come from its own seeded stream (keyed by the label id), so the same labels give the same
marks whatever order they are read in.
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
            try:
                prompt = Prompt.parse(g["prompt"])
            except UserError:  # a prompt of another world has no oracle
                regions[r.image_id] = None
            else:
                regions[r.image_id] = problem_regions(load_image(store.root, g), prompt)
        truth = regions[r.image_id]
        if truth is None:
            continue
        rng = seeds.rng(seed, seeds.Stream.SIMULATED_MARKS, seeds.text_key(r.label_id))
        points, words = click_marks(truth.mask, truth.words, rng, profile)
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
        try:
            prompt = Prompt.parse(g["prompt"])
        except UserError:
            continue
        out[iid] = problem_regions(load_image(store.root, g), prompt).mask
    return out
