"""Simulated raters labeling a round through the app's own assignment and write path.

No browser: each simulated rater asks :class:`~labeling_app.assignment.Assigner` for its current
item exactly as the app does for a logged-in rater, judges the image(s) with
:class:`data.shapes.raters.SimulatedRater`, and submits the answer with its token.  So the demo,
the tests and the reward stage get rounds with the same overlap, gold items, leases and rows as a
round labeled by people.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from data.errors import UserError
from data.shapes.raters import RaterProfile, RoundSummary, SimulatedRater
from data.shapes.world import Prompt
from labeling_app.assignment import Assigner


def run_simulated_round(assigner: Assigner, panel: list[RaterProfile], *, seed: int = 0,
                        max_labels_per_rater: int | None = None, progress=None) -> RoundSummary:
    """Let ``panel`` label until no rater gets another item (or each gave
    ``max_labels_per_rater``).  Raters take turns in a new random order each sweep, so which raters
    share an item varies (agreement is then measured across every pair of raters)."""
    if not panel:
        raise UserError("the simulated panel is empty.", "give at least one rater profile.")
    raters = [SimulatedRater(p, seed) for p in panel]
    rng = np.random.default_rng([seed, 5])
    images: dict[str, Image.Image] = {}
    prompts: dict[str, Prompt] = {}

    def image(image_id: str) -> Image.Image:
        if image_id not in images:
            with Image.open(assigner.image_path(image_id)) as im:
                images[image_id] = im.convert("RGB")
        return images[image_id]

    def prompt(text: str) -> Prompt:
        if text not in prompts:
            try:
                prompts[text] = Prompt.parse(text)
            except UserError:
                raise UserError(f"simulated raters judge shapes-world prompts only, and {text!r} is not one.",
                                "simulate a round of shapes-world prompts, or label it with people.") from None
        return prompts[text]

    counts: Counter[str] = Counter()
    n_binary = n_rankings = n_gold = 0
    active = list(range(len(raters)))
    while active:
        still = []
        for i in rng.permutation(active):
            rater = raters[int(i)]
            rid = rater.rater_id
            progressed = False
            for task in assigner.tasks:
                if max_labels_per_rater is not None and counts[rid] >= max_labels_per_rater:
                    break
                a = assigner.current(rid, task)
                if a is None:
                    continue
                p = prompt(a.item.prompt)
                if task == "binary":
                    ans = rater.binary(image(a.item.image_ids[0]), p)
                    assigner.submit_binary(rid, a.token, ans.label, ans.skip_reason, duration_ms=ans.duration_ms)
                    n_binary += 1
                    n_gold += a.item.is_gold
                else:
                    ans = rater.rank([image(x) for x in a.item.image_ids], p)
                    assigner.submit_ranking(rid, a.token, ans.ranks, duration_ms=ans.duration_ms)
                    n_rankings += 1
                counts[rid] += 1
                progressed = True
                if progress is not None:
                    progress.update(1)
            if progressed:
                still.append(int(i))
        active = still
    return RoundSummary(n_binary, n_rankings, dict(sorted(counts.items())), gold_labels=n_gold)
