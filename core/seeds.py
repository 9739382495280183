"""Named random streams: every stage that draws random numbers takes its own stream of the run's
seed, so no two stages share (and silently correlate) their randomness, and a stream keyed by data
(a rater id, a round's size) can never land on another stage's.

- A NumPy stream is ``np.random.default_rng([seed, tag, *keys])`` (:func:`rng`); an integer seed
  drawn from one (for a torch generator) is :func:`derived_seed`.  Each stage has its own ``tag``.
- Integer seeds of images (a torch generator's or the renderer's seed) follow one scheme per
  concept: :func:`eval_seeds` (evaluations), :func:`round_image_seed` (a labeling round's i-th image
  of a prompt), :func:`render_seed` (renders drawn for a check or a reference) and the
  :data:`FIXED_NOISE` offsets (fine-tuning's fixed-noise grids and curves).

``tests/test_seeds.py`` checks that no two streams coincide.
"""

from __future__ import annotations

import zlib
from enum import IntEnum, unique

import numpy as np


@unique
class Stream(IntEnum):
    """Tag of each stage's NumPy stream (the second entry of its seed sequence)."""

    CLIP_TRAINING = 3  # shapes.training.clip: batches and degradations
    SIMULATED_PANEL = 5  # labeling_app.simulate: the order raters take turns in
    GOLD_SERVING = 7  # labeling_app.assignment: the order gold items are served in
    ORACLE_GOLD = 11  # labeling_app.gold: which images become gold items
    VAE_TRAINING = 13  # shapes.training.vae: batches
    RENDER_POOL = 17  # shapes.training.common.render_pool: the base models' training renders
    ROUND_MISMATCH = 19  # shapes.render.render_round: which renders show a perturbed prompt
    RENDERER_ROUND = 23  # collect.generate, source=renderer (keyed by the round's size)
    RATER_SERVING = 29  # labeling_app.assignment: a rater's own item order (keyed by the rater id)
    SIMULATED_RATER = 31  # shapes.raters.SimulatedRater: a rater's noise (keyed by the rater id)
    RATER_PANEL = 37  # shapes.raters.default_panel: the panel's biases
    DPOK_ROUND = 41  # finetune.dpok: a round's noise and transitions (keyed by round, process)
    RWL_STEP = 43  # finetune.rwl: a step's minibatch and noise (keyed by step, process)
    DRAFT_STEP = 79  # finetune.draft: a step's prompts and noise (keyed by step, process)
    LABELS_STEP = 83  # finetune.preference: a DPO / KTO step's examples and noise (keyed by step, process)
    ORACLE_CHECK = 47  # pipelines.oracle_check: degradations
    LOADTEST_RATER = 53  # pipelines.loadtest_label: a virtual rater's choices (keyed by its number)
    SELECTION = 67  # collect.selection: which of a round's images go to raters (keyed by round)
    SIMULATED_MARKS = 73  # shapes.marking: a simulated rater's clicks (keyed by the rater id and the image id)
    BINARY_ORDER = 101  # labeling_app.items: the binary task's serving order
    RANKING_ORDER = 102  # labeling_app.items: the ranking task's serving order


def rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """The NumPy generator of ``stream`` for ``seed`` (``keys``: e.g. a rater's or a round's id)."""
    return np.random.default_rng([seed, int(stream), *keys])


def derived_seed(seed: int, stream: Stream, *keys: int) -> int:
    """One integer seed (< 2**32) from ``stream``, for a torch generator."""
    return int(np.random.SeedSequence([seed, int(stream), *keys]).generate_state(1)[0])


def text_key(text: str) -> int:
    """A stable integer key of a string (a rater id) for :func:`rng`: its CRC-32."""
    return zlib.crc32(text.encode())


ROUND_STRIDE = 1_000_003  # a labeling round's image seeds: seed * ROUND_STRIDE + i
# An evaluation's image seeds: EVAL_BASE + seed * EVAL_STRIDE + i.  Round and render seeds stay
# below 2**32 (seeds < 4294), so an evaluation never samples an image a round labelled.
EVAL_BASE = 2**32
EVAL_STRIDE = 1_000_000


def eval_seeds(seed: int, n: int) -> list[int]:
    """Per-image sampling seeds of an evaluation (image i of the evaluated list; ``n`` <= 10**6),
    the same for every model compared (base, fine-tuned runs, the base card)."""
    if n > EVAL_STRIDE:
        raise ValueError(f"{n} images exceed an evaluation seed's {EVAL_STRIDE} seeds")
    return [EVAL_BASE + seed * EVAL_STRIDE + i for i in range(n)]


def round_image_seed(seed: int, i: int) -> int:
    """The seed of a labeling round's i-th image of a prompt (generated or rendered): re-running a
    round with more images per prompt keeps the images it already has."""
    return seed * ROUND_STRIDE + i


def render_seed(seed: int, i: int, offset: int = 0) -> int:
    """The seed of the i-th render of a set drawn for a check or a reference (not a labeling round):
    ``seed * 100_003 + offset + i``; RWL's D_pre renders take offset 50_000."""
    return seed * 100_003 + offset + i


# Fixed-noise offsets of fine-tuning: grids compare across rounds and methods (DPOK's and RWL's
# share FIXED_NOISE["grid"] on purpose), the oracle curve its own, D_model's sampling its own.
FIXED_NOISE = {"grid": 12345, "curve": 424242, "rwl_model_set": 777}
