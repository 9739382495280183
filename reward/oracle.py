"""The shapes oracle in reward training: its graded scores of a dataset's images
(:func:`oracle_scores`) and the dataset relabelled by them (:func:`relabel_with_oracle`)."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from core.errors import UserError
from data.generations import load_image
from reward.data import AuxExamples, RewardData, Split
from shapes.oracle import ALIGNED_MIN_SCORE, judge
from shapes.world import Prompt


def oracle_scores(data: RewardData, images: np.ndarray, progress: bool = False) -> np.ndarray | None:
    """The shapes oracle's graded score of ``images`` (NaN elsewhere); None outside the shapes
    world."""
    out = np.full(len(data.images), np.nan)
    try:
        prompts = {i: Prompt.parse(data.images["prompt"].iloc[i]) for i in images}
    except UserError:
        return None
    for i in tqdm(images, desc="oracle", unit="img", disable=not progress, file=sys.stderr):
        out[i] = judge(load_image(data.root, data.images.iloc[i]), prompts[i]).score(prompts[i])
    return out


def relabel_with_oracle(data: RewardData, truth: np.ndarray) -> RewardData:
    """``data`` with the training and selection labels replaced by the oracle's: binary target =
    aligned (graded score >= ALIGNED_MIN_SCORE), ranking pair label = which image the graded score
    prefers (0.5 on equal scores), auxiliary examples = the aligned images.  Same images, same
    pairs: only the label noise is gone.  ``truth``: (n_images,) graded scores, NaN where not judged."""
    def relabel(s: Split | None) -> Split | None:
        if s is None:
            return None
        b, p, a = s.binary, s.pairs, s.aux
        aligned = truth[b.image] >= ALIGNED_MIN_SCORE
        o0, o1 = truth[p.image_0], truth[p.image_1]
        label = np.where(o0 > o1, 1.0, np.where(o0 < o1, 0.0, 0.5)).astype(np.float32)
        # Perturbation pools are per prompt; prompts with no rater-approved image have none.
        pool_of = {int(q): row for q, row in zip(a.prompt, a.pool)}
        good = b.image[aligned & np.isin(data.image_prompt[b.image], list(pool_of))]
        prompts = data.image_prompt[good]
        pool = np.stack([pool_of[int(q)] for q in prompts]) if len(good) else a.pool[:0]
        return replace(s, binary=replace(b, target=aligned.astype(np.float32)),
                       pairs=replace(p, label_0=label), aux=AuxExamples(good, prompts, pool))

    return replace(data, train=relabel(data.train), select=relabel(data.select))
