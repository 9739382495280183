"""Simulated raters: the oracle's judgement with human-like noise.

Stand-ins for people in the shapes world, so the demo and tests can run a labeling round without
anyone in a browser.  Each rater has a profile:

- ``flip_rate``: chance that a binary answer is the opposite of the oracle's verdict;
- ``bias``: in [-1, 1]; with probability ``|bias|`` the answer is replaced by "good" (bias > 0, a
  lenient rater) or "bad" (bias < 0, a harsh one);
- ``skip_rate``: chance of skipping an item (with a reason);
- ``rank_noise`` and ``tie_width``: a ranking orders images by the oracle's graded score plus
  Gaussian noise of that std; scores that fall in the same bin of width ``tie_width`` are ties.

Rows go through :class:`data.store.Store`, the same API the labeling app writes through.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from data.errors import UserError
from data.generations import load_image
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS, validate_ranks
from data.shapes.oracle import judge
from data.shapes.world import Prompt
from data.store import Store

SKIP_REASONS = ("image does not load", "cannot tell", "prompt unclear")


@dataclass(frozen=True)
class RaterProfile:
    rater_id: str
    flip_rate: float = 0.1
    bias: float = 0.0
    skip_rate: float = 0.02
    rank_noise: float = 0.3
    tie_width: float = 0.25
    mean_duration_ms: float = 2500.0

    def __post_init__(self):
        for name in ("flip_rate", "skip_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"rater {self.rater_id}: {name}={v} is not a probability.",
                                f"set {name} between 0 and 1.")
        if not -1.0 <= self.bias <= 1.0:
            raise UserError(f"rater {self.rater_id}: bias={self.bias} is outside [-1, 1].",
                            "set bias between -1 (harsh) and 1 (lenient).")
        if self.rank_noise < 0 or self.tie_width < 0:
            raise UserError(f"rater {self.rater_id}: rank_noise and tie_width must be >= 0.",
                            "set them to 0 or more.")


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
        self.rng = np.random.default_rng([seed, *profile.rater_id.encode()])

    @property
    def rater_id(self) -> str:
        return self.profile.rater_id

    def _duration(self) -> int:
        return int(self.rng.lognormal(np.log(self.profile.mean_duration_ms), 0.4))

    def binary(self, image, prompt: Prompt) -> BinaryAnswer:
        p = self.profile
        if self.rng.random() < p.skip_rate:
            reason = SKIP_REASONS[int(self.rng.integers(len(SKIP_REASONS)))]
            return BinaryAnswer("skip", reason, self._duration())
        good = judge(image, prompt).aligned
        if self.rng.random() < p.flip_rate:
            good = not good
        if self.rng.random() < abs(p.bias):
            good = p.bias > 0
        return BinaryAnswer("good" if good else "bad", None, self._duration())

    def rank(self, images: list, prompt: Prompt) -> RankingAnswer:
        scores = np.array([judge(im, prompt).score(prompt) for im in images])
        scores = scores + self.rng.normal(0.0, self.profile.rank_noise, size=len(scores))
        ranks = validate_ranks(dense_ranks(scores, self.profile.tie_width), len(images))
        return RankingAnswer(ranks, self._duration() * len(images))


def default_panel(n: int = 5, flip_rate: float = 0.1, seed: int = 0) -> list[RaterProfile]:
    """``n`` raters with ``flip_rate`` noise, small individual biases and a few skips."""
    rng = np.random.default_rng(seed)
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



@dataclass(frozen=True)
class RoundSummary:
    binary_labels: int
    rankings: int
    labels_by_rater: dict[str, int]


def simulate_round(
    store: Store,
    panel: list[RaterProfile],
    *,
    overlap: int = 2,
    binary: bool = True,
    ranking: bool = True,
    guideline_version: str = "sim-1",
    seed: int = 0,
    batch_rows: int = 64,
) -> RoundSummary:
    """Label every image of the round (binary) and every prompt's image set (ranking), each by
    ``overlap`` distinct raters of ``panel``, appending through ``store``."""
    if not 1 <= overlap <= len(panel):
        raise UserError(f"overlap {overlap} needs between 1 and {len(panel)} raters.",
                        "lower the overlap or add raters to the panel.")
    gens = store.to_pandas(GENERATIONS)
    if gens.empty:
        raise UserError(f"no generations in {store.root}.", "generate or render a round first.")
    rng = np.random.default_rng(seed)
    raters = [SimulatedRater(p, seed) for p in panel]
    images = {r["image_id"]: load_image(store.root, r) for _, r in gens.iterrows()}
    counts: Counter[str] = Counter()
    pending: dict[str, list[dict]] = {BINARY_LABELS.name: [], RANKINGS.name: []}

    def flush(table: str, force: bool = False):
        if pending[table] and (force or len(pending[table]) >= batch_rows):
            store.append(table, pending[table])
            pending[table] = []

    if binary:
        for row in gens.itertuples():
            for ri in rng.choice(len(raters), size=overlap, replace=False):
                rater = raters[ri]
                answer = rater.binary(images[row.image_id], Prompt.parse(row.prompt))
                pending[BINARY_LABELS.name].append(binary_row(
                    rater.rater_id, row.image_id, row.prompt_id, answer,
                    guideline_version=guideline_version))
                counts[rater.rater_id] += 1
                flush(BINARY_LABELS.name)
    n_rankings = 0
    if ranking:
        for prompt_id, group in gens.groupby("prompt_id", sort=True):
            if len(group) < 2:
                continue
            prompt = Prompt.parse(group["prompt"].iloc[0])
            ids = group["image_id"].tolist()
            for ri in rng.choice(len(raters), size=overlap, replace=False):
                rater = raters[ri]
                answer = rater.rank([images[i] for i in ids], prompt)
                pending[RANKINGS.name].append(ranking_row(
                    rater.rater_id, prompt_id, ids, answer, guideline_version=guideline_version))
                counts[rater.rater_id] += 1
                n_rankings += 1
                flush(RANKINGS.name)
    for table in pending:
        flush(table, force=True)
    n_binary = sum(counts.values()) - n_rankings
    return RoundSummary(n_binary, n_rankings, dict(sorted(counts.items())))
