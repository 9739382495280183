"""Learning-rate schedules as pure functions of the optimizer step: one definition for the shapes
world's model training and for fine-tuning (which wraps it in a ``LambdaLR`` with ``peak=1``)."""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "cosine"]


def learning_rate(step: int, total: int, warmup: int, peak: float, schedule: LRSchedule = "cosine",
                  floor: float = 0.05) -> float:
    """The learning rate at 0-based optimizer ``step`` of ``total``.

    Linear warm-up to ``peak`` over ``warmup`` steps, then constant, or a cosine from ``peak`` down to
    ``floor * peak`` at step ``total`` (steps past it stay there).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))
