"""Named random streams: every stage that draws random numbers gets its own stream from the run's
seed, so no two stages share (and silently correlate) their randomness.

A NumPy stream is ``np.random.default_rng([seed, tag, *keys])``; a stream of integer seeds (for
torch generators and renders) is ``base(seed) + i``.  The tags and bases are the values each stage
used before they were named here, so every output reproduces; ``tests/test_seeds.py`` checks that
no two streams coincide.
"""

from __future__ import annotations

from enum import IntEnum, unique

import numpy as np


@unique
class Stream(IntEnum):
    """Tags of the NumPy streams (the second entry of the seed sequence)."""


def rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """The NumPy generator of ``stream`` for ``seed`` (``keys``: e.g. a rater's or round's id)."""
    return np.random.default_rng([seed, int(stream), *keys])


def eval_seeds(seed: int, n: int) -> list[int]:
    """Per-image sampling seeds of an evaluation: image i of the evaluated list gets
    ``seed * 1000 + i``, the same for every model compared (base, fine-tuned runs, the base card)."""
    return [seed * 1000 + i for i in range(n)]
