"""The frontier and the floor: a fine-tuned model's broken share read against a plain run turned down.

Every LoRA user can trade gain for breakage by scaling the adapter at load (diffusers'
``fuse_lora(lora_scale=s)``; :func:`core.loading.with_scale`).  So a method that breaks fewer of the
base's right images is only better than plain fine-tuning if it breaks fewer *at the same gain*
than the plain run scaled down to that gain.  The evaluation samples the plain run (the
*frontier* model, ``EvalConfig.frontier``) at several scales; its points (scale, gain over the
base, broken share) trace the frontier, and each model is read against it:

- *frontier at equal gain*: the frontier's broken share at the model's gain, linearly interpolated
  between the two scaled points whose gains bracket it (walking the points in order of scale, the
  first such pair); at a gain at or below the smallest scale's, the floor; above every point's
  gain, undefined (NaN: the model gains more than the plain run at any evaluated scale);
- *the floor*: the broken share of the smallest scale (0.1 by the docs' advice).  A tenth-strength
  LoRA leaves most images as they were, and yet flips the verdicts of base-right images that sit on
  the oracle's edge: that share is noise any model pays, not breakage a method can remove;
- *the target test* (issue 78): (broken - floor) <= 1/2 (frontier - floor), i.e. the margin
  1/2 (frontier + floor) - broken >= 0, with its standard error.

Standard errors: a broken share p of n base-right images has the binomial SE sqrt(p (1 - p) / n).
The frontier's interpolated value (1 - w) p_lo + w p_hi takes the SE (1 - w) se_lo + w se_hi: the
two points are drawn from the same seeds and largely the same images, so they are correlated, and
this (perfect correlation) bounds the SE of the combination from above whatever the correlation;
the weight w is taken as fixed (the gains' own noise is left out).  The margin's SE combines the
model's, half the frontier's and half the floor's as if independent (they share seeds, so read it
as approximate).

Pure functions on numbers; :mod:`evaluation.compare` feeds them each sampler's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

FLOOR_SCALE = 0.1  # the scale whose broken share is the floor, when evaluated (docs' advice)
GAIN_SHARE_TARGET = 0.8  # issue 78's target: at >= 80 % of the plain run's full gain ...
RIGHT_IMAGES_WANTED = 150  # base-right target images for a broken share's SE of about 3 points at 20 %
MEASURES = ("broken", "broken_changed")  # KeepWhatIsRight's shares read against the frontier


@dataclass(frozen=True)
class FrontierPoint:
    """The frontier model at one scale, against the base at one sampler."""

    scale: float
    gain: float  # alignment gain over the base on the targets (share, e.g. 0.3 = +30 points)
    rate: float  # the broken share measured (of the base-right images)
    n: int  # base-right images the share is of


@dataclass(frozen=True)
class FrontierReading:
    """One model's broken share (``measure``: "broken", every verdict flip; "broken_changed", only
    images with at least evaluation.keep.CHANGED_SHARE of their pixels moved) against the frontier
    at its gain and the floor; shares in [0, 1], NaN where undefined."""

    measure: str
    rate: float
    rate_se: float
    frontier: float  # the frontier's share at the model's gain (NaN: the model gains more than any point)
    frontier_se: float
    between: tuple[float, float] | None  # the two scales interpolated between (equal: the floor's); None: none
    floor: float  # the smallest scale's share
    floor_se: float
    floor_scale: float
    margin: float  # 1/2 (frontier + floor) - rate: >= 0 passes the target test
    margin_se: float
    passes: bool | None  # margin >= 0; None: no frontier at this gain
    gain_share: float  # the model's gain / the frontier model's at scale 1 (NaN: no scale-1 point or gain 0)
    # issue 78's target: gain_share >= GAIN_SHARE_TARGET and passes; None: undefined
    meets_target: bool | None


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the SE of a share p of n independent images (NaN for n = 0 or p NaN)."""
    if n <= 0 or not math.isfinite(p):
        return math.nan
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def frontier_at(points: list[FrontierPoint], gain: float) -> tuple[float, float, tuple[float, float] | None]:
    """(share, SE, (scale_lo, scale_hi)) of the frontier at ``gain`` (module doc): interpolated
    between the first pair of points (in order of scale) whose gains bracket it; the smallest
    scale's own share at or below its gain; (NaN, NaN, None) above every point's gain or without
    points."""
    pts = sorted(points, key=lambda p: p.scale)
    if not pts or not math.isfinite(gain):
        return math.nan, math.nan, None
    first = pts[0]
    if gain <= first.gain:
        return first.rate, binomial_se(first.rate, first.n), (first.scale, first.scale)
    for a, b in zip(pts, pts[1:]):
        lo, hi = sorted((a.gain, b.gain))
        if lo <= gain <= hi and hi > lo:
            w = (gain - a.gain) / (b.gain - a.gain)
            rate = (1 - w) * a.rate + w * b.rate
            se = (1 - w) * binomial_se(a.rate, a.n) + w * binomial_se(b.rate, b.n)
            return rate, se, (a.scale, b.scale)
    return math.nan, math.nan, None


def read_frontier(points: list[FrontierPoint], gain: float, rate: float, n: int, measure: str = "broken"
                  ) -> FrontierReading:
    """A model of ``gain`` that breaks the share ``rate`` of ``n`` base-right images, read against
    the frontier ``points`` (at least one) and its floor (the smallest scale's point)."""
    pts = sorted(points, key=lambda p: p.scale)
    floor = pts[0]
    floor_se = binomial_se(floor.rate, floor.n)
    front, front_se, between = frontier_at(pts, gain)
    rate_se = binomial_se(rate, n)
    margin = 0.5 * (front + floor.rate) - rate
    margin_se = math.sqrt(rate_se ** 2 + 0.25 * front_se ** 2 + 0.25 * floor_se ** 2)
    passes = bool(margin >= 0) if math.isfinite(margin) else None
    full = [p.gain for p in pts if p.scale == 1]
    gain_share = gain / full[0] if full and full[0] > 0 and math.isfinite(gain) else math.nan
    meets = None if passes is None or not math.isfinite(gain_share) else bool(passes and gain_share >= GAIN_SHARE_TARGET)
    return FrontierReading(measure, rate, rate_se, front, front_se, between, floor.rate, floor_se, floor.scale,
                           margin, margin_se, passes, gain_share, meets)


def seeds_for_right_images(n_right: int, samples_per_prompt: int, wanted: int = RIGHT_IMAGES_WANTED) -> int:
    """The seeds per target prompt at which the base would draw about ``wanted`` right target
    images, from the ``n_right`` it drew at ``samples_per_prompt`` (its right share held fixed);
    ``samples_per_prompt`` itself when it drew enough; 0 when it drew none (no estimate)."""
    if n_right >= wanted:
        return samples_per_prompt
    if n_right <= 0:
        return 0
    return math.ceil(wanted * samples_per_prompt / n_right)


def split_scale(path: str, name: str) -> tuple[str, float | None]:
    """A model reference ``path[@scale]`` of ``make eval``'s ``models`` (``runs/x@0.25``): the path
    and the scale (None: none given).  A folder whose own name holds "@" is taken whole when it
    exists; a scale that is no number is an error (:func:`core.loading.with_scale` refuses one that
    is not positive)."""
    head, at, tail = path.rpartition("@")
    if not at or Path(path).exists():
        return path, None
    try:
        return head, float(tail)
    except ValueError:
        raise UserError(f"model {name}: '@{tail}' in '{path}' is no scale.",
                        f"write a number after @, e.g. {name}={head}@0.25, or leave the @ out.") from None
