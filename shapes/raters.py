"""Simulated raters: the oracle's judgement with human-like noise.

Stand-ins for people in the shapes world, so the demo and tests can run a labeling round without
anyone in a browser.  Their verdict is the oracle's, strict colour verdict included (an object
drawn orange for "yellow" is wrong to them as to a person), so the learned reward can learn it;
each rater's noise sits on top, by a profile:

- ``flip_rate``: chance that a binary answer is the opposite of the oracle's verdict;
- ``bias``: in [-1, 1]; with probability ``|bias|`` the answer is replaced by "good" (bias > 0, a
  lenient rater) or "bad" (bias < 0, a harsh one);
- ``skip_rate``: chance of skipping an item (with a reason);
- ``rank_noise`` and ``tie_width``: a ranking orders images by the oracle's graded score plus
  Gaussian noise of that std; scores that fall in the same bin of width ``tie_width`` are ties.

A round is labeled through the labeling app's own assignment and write path
(:func:`labeling_app.simulate.simulate_round`), so simulated rounds have the same overlap,
gold items and rows as rounds labeled by people.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

import numpy as np

from core import seeds
from core.config import Bounds, NonNegativeFloat, PositiveInt, Share, check_bounds
from data.schemas import validate_ranks
from shapes.oracle import Verdict, judge
from shapes.world import Prompt

SKIP_REASONS = ("image does not load", "cannot tell", "prompt unclear")


@dataclass(frozen=True)
class RaterProfile:
    rater_id: str
    flip_rate: Share = 0.1
    bias: Annotated[float, Bounds(low=-1, high=1)] = 0.0  # -1: always harsh, 1: always lenient
    skip_rate: Share = 0.02
    rank_noise: NonNegativeFloat = 0.3
    tie_width: NonNegativeFloat = 0.25
    mean_duration_ms: float = 2500.0

    def __post_init__(self):  # built in code, not by load_config: the field types' bounds checked here
        check_bounds(self, f"rater {self.rater_id}: ")


@dataclass(frozen=True)
class BinaryAnswer:
    label: str  # good | bad | skip
    skip_reason: str | None
    duration_ms: int


@dataclass(frozen=True)
class RankingAnswer:
    ranks: list[int]  # dense, 1 = best, ties share a rank
    duration_ms: int


def dense_ranks(scores: np.ndarray, tie_width: float) -> list[int]:
    """Dense ranks (1 = highest score); scores in the same bin of ``tie_width`` tie."""
    keys = np.floor(scores / tie_width) if tie_width > 0 else scores
    order = sorted(set(keys.tolist()), reverse=True)
    return [order.index(k) + 1 for k in keys.tolist()]


class SimulatedRater:
    def __init__(self, profile: RaterProfile, seed: int = 0):
        self.profile = profile
        self.rng = seeds.rng(seed, seeds.Stream.SIMULATED_RATER, seeds.text_key(profile.rater_id))

    @property
    def rater_id(self) -> str:
        return self.profile.rater_id

    def _duration(self) -> int:
        return int(self.rng.lognormal(np.log(self.profile.mean_duration_ms), 0.4))

    def binary(self, image, prompt: Prompt, verdict: Verdict | None = None) -> BinaryAnswer:
        """``verdict``: the oracle's verdict on ``image`` for ``prompt`` where the caller has it
        (a round judges each image once for all its raters); None: judged here."""
        p = self.profile
        if self.rng.random() < p.skip_rate:
            reason = SKIP_REASONS[int(self.rng.integers(len(SKIP_REASONS)))]
            return BinaryAnswer("skip", reason, self._duration())
        good = (judge(image, prompt) if verdict is None else verdict).aligned
        if self.rng.random() < p.flip_rate:
            good = not good
        if self.rng.random() < abs(p.bias):
            good = p.bias > 0
        return BinaryAnswer("good" if good else "bad", None, self._duration())

    def rank(self, images: list, prompt: Prompt, verdicts: list[Verdict] | None = None) -> RankingAnswer:
        """``verdicts``: the oracle's on ``images``, as for :meth:`binary`."""
        verdicts = [judge(im, prompt) for im in images] if verdicts is None else verdicts
        scores = np.array([v.score(prompt) for v in verdicts])
        scores = scores + self.rng.normal(0.0, self.profile.rank_noise, size=len(scores))
        ranks = validate_ranks(dense_ranks(scores, self.profile.tie_width), len(images))
        return RankingAnswer(ranks, self._duration() * len(images))


@dataclass(frozen=True)
class MarkProfile:
    """How a simulated rater marks where an image is wrong (Rich Human Feedback's clicks).

    Each connected problem region (an object, the background) is left unclicked with probability
    ``miss_rate``; otherwise it gets ``1 + Poisson(clicks_per_object * a - 1)`` clicks at most
    ``max_clicks``, where ``a`` is its area in object areas (``OBJECT_AREA``, at least 1), so a wrong
    background draws more clicks than an object.  A click is a pixel of the region drawn uniformly,
    moved by Gaussian noise of std ``position_noise`` (a fraction of the image side) and clipped to
    the image.  Each wrong word is left unmarked with probability ``word_miss_rate``."""

    miss_rate: Share = 0.1
    position_noise: NonNegativeFloat = 0.02
    clicks_per_object: Annotated[float, Bounds(low=1)] = 1.5
    max_clicks: PositiveInt = 6
    word_miss_rate: Share = 0.1

    def __post_init__(self):  # as RaterProfile's
        check_bounds(self, "marks: ")


OBJECT_AREA = 0.0625  # an object's area as a fraction of the image: a 25 %-of-the-side square


def click_marks(mask: np.ndarray, words, rng: np.random.Generator, profile: MarkProfile = MarkProfile()
                ) -> tuple[list[tuple[float, float]], list[int]]:
    """One rater's marks on an image: ``mask`` (H, W) bool, the problem regions
    (:func:`shapes.regions.problem_regions`); ``words`` the wrong word indices.  Returns points
    (x, y) in [0, 1] (x to the right, y down) and the marked words, sorted.  A pure function of
    its arguments and ``rng``'s state (see :class:`MarkProfile`)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    points: list[tuple[float, float]] = []
    labels, n = ndimage.label(mask)
    for region in range(1, n + 1):
        if rng.random() < profile.miss_rate:
            continue
        ys, xs = np.nonzero(labels == region)
        areas = max(1.0, len(ys) / (h * w) / OBJECT_AREA)
        k = min(profile.max_clicks, 1 + int(rng.poisson(max(0.0, profile.clicks_per_object * areas - 1))))
        for j in rng.integers(len(ys), size=k):
            x = (xs[j] + rng.random()) / w + rng.normal(0.0, profile.position_noise)
            y = (ys[j] + rng.random()) / h + rng.normal(0.0, profile.position_noise)
            points.append((float(np.clip(x, 0.0, 1.0)), float(np.clip(y, 0.0, 1.0))))
    kept = sorted(int(i) for i in words if rng.random() >= profile.word_miss_rate)
    return points, kept


def default_panel(n: int = 5, flip_rate: float = 0.1, seed: int = 0) -> list[RaterProfile]:
    """``n`` raters with ``flip_rate`` noise, small individual biases and a few skips."""
    rng = seeds.rng(seed, seeds.Stream.RATER_PANEL)
    return [
        RaterProfile(rater_id=f"sim-{i:02d}", flip_rate=flip_rate,
                     bias=float(np.round(rng.uniform(-0.05, 0.05), 3)), skip_rate=0.02)
        for i in range(n)
    ]


def binary_row(rater_id: str, image_id: str, prompt_id: str, answer: BinaryAnswer, *,
               guideline_version: str, is_gold: bool = False) -> dict:
    return dict(
        label_id=uuid.uuid4().hex, image_id=image_id, prompt_id=prompt_id, rater_id=rater_id,
        label=answer.label, skip_reason=answer.skip_reason, created_at=datetime.now(timezone.utc),
        duration_ms=answer.duration_ms, is_gold=is_gold, guideline_version=guideline_version,
    )


def ranking_row(rater_id: str, prompt_id: str, image_ids: list[str], answer: RankingAnswer, *,
                guideline_version: str) -> dict:
    return dict(
        ranking_id=uuid.uuid4().hex, prompt_id=prompt_id, rater_id=rater_id,
        image_ids=list(image_ids), ranks=answer.ranks, created_at=datetime.now(timezone.utc),
        duration_ms=answer.duration_ms, guideline_version=guideline_version,
    )
