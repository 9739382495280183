"""Does a learning curve keep climbing?  The check the demo report and the results page apply to
DPOK's oracle learning curve (share of a fixed set of samples judged aligned, measured every few
rounds): no point after the best may fall more than one standard error below it.

The standard error is the binomial one of the best point, sqrt(p (1 - p) / n) for n images: about
6 points at p = 0.5 and the demo's 64 curve images.  The curve re-samples the same noise at every
point, so its points are correlated and a fall larger than that is mostly the policy's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CurveCheck:
    best: float  # share in [0, 1] at the best point (the first, if tied)
    best_round: int
    last: float  # share at the last point
    fall: float  # largest drop below ``best`` at a later point, as a share (0: none)
    fall_round: int | None  # the round of that drop, None if no later point is lower
    standard_error: float | None  # binomial SE of the best point; None when the image count is unknown

    @property
    def steady(self) -> bool | None:
        """No later point more than one standard error below the best (None: SE unknown)."""
        return None if self.standard_error is None else self.fall <= self.standard_error

    def describe(self) -> str:
        """One line, in points (%): best, last, the largest later fall and the verdict."""
        text = f"best {100 * self.best:.1f} % at round {self.best_round}, last {100 * self.last:.1f} %"
        text += (f"; largest later fall {100 * self.fall:.1f} points (round {self.fall_round})"
                 if self.fall_round is not None else "; no later point below the best")
        if self.standard_error is None:
            return text
        verdict = "climbs" if self.steady else "falls back"
        return f"{text}; one SE {100 * self.standard_error:.1f} points: {verdict}"


def check_curve(points: list[dict], images: int | None = None) -> CurveCheck:
    """``points``: ``[{"round": r, "oracle_aligned": share}, ...]`` in round order (a DPOK
    ``metrics.json`` curve); ``images``: the images behind each point (None: read from the
    points' ``images`` key if they have it)."""
    if not points:
        raise ValueError("an empty learning curve has no best point")
    values = [float(p["oracle_aligned"]) for p in points]
    i = max(range(len(values)), key=lambda k: (values[k], -k))
    later = values[i + 1:]
    j = min(range(len(later)), key=lambda k: (later[k], k)) if later else None
    fall = values[i] - later[j] if j is not None and later[j] < values[i] else 0.0
    n = images if images is not None else points[i].get("images")
    se = math.sqrt(values[i] * (1 - values[i]) / n) if n else None
    return CurveCheck(best=values[i], best_round=int(points[i]["round"]), last=values[-1], fall=fall,
                      fall_round=int(points[i + 1 + j]["round"]) if fall > 0 else None, standard_error=se)
