"""Keep what is right: how a fine-tuned model changes the base model's images, image by image.

Base and fine-tuned model draw each (prompt, seed) from the same noise, so the difference between
their two images is the fine-tuning's doing.  Per model against the base (Focus-N-Fix's question,
Xing et al. 2025): of the images the base drew wrong, the share the model draws right (*fixed*); of
those the base drew right, the share it draws wrong (*broken*); and how many pixels moved, on the
images the base drew right (every change there is a risk) and, where a problem mask of the base
image is known (the oracle's in the shapes world; a region head's for other models), inside the
problem region of the images it drew wrong and in the region a fix should leave alone (a change
there is collateral).  Where an object is missing there is no region to mark; the region to leave
alone is then the right objects (:mod:`shapes.regions`), not everything unmarked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A pixel "moved" when one of its RGB channels changed by more than this (0-255 units): above the
# VAE's round-trip noise, below any change of an object's colour or outline.
MOVED_THRESHOLD = 40
# An image "changed" when at least this share of its pixels moved: below it a model's image is the
# base's up to a few pixels, and a verdict that flips there sits on the oracle's edge (issue 78's
# threshold).
CHANGED_SHARE = 0.02


@dataclass(frozen=True)
class KeepWhatIsRight:
    fixed: float  # share of the base-wrong images the model draws right (NaN: the base drew none wrong)
    broken: float  # share of the base-right images the model draws wrong (NaN: the base drew none right)
    n_base_wrong: int
    n_base_right: int
    moved_base_right: float  # mean share of pixels moved, over the base-right images
    moved_inside: float | None = None  # share of the problem regions' pixels moved (base-wrong images with regions)
    moved_outside: float | None = None  # share of the pixels to leave alone that moved (same images)
    # of the base-right images, the share the model draws wrong with at least CHANGED_SHARE of their
    # pixels moved (broken for real, not a verdict flipped by a few pixels), and the share with fewer
    # moved (unchanged); NaN: the base drew none right
    broken_changed: float = math.nan
    unchanged: float = math.nan


def moved_pixels(base: np.ndarray, model: np.ndarray, threshold: int = MOVED_THRESHOLD) -> np.ndarray:
    """(H, W) bool: the pixels whose RGB changed by more than ``threshold`` in some channel between
    two uint8 (H, W, 3) images."""
    if base.shape != model.shape:
        raise ValueError(f"images of shapes {base.shape} and {model.shape} cannot be compared pixel by pixel")
    return (np.abs(base.astype(np.int16) - model.astype(np.int16)) > threshold).any(axis=-1)


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else math.nan


def keep_what_is_right(base_ok: list[bool], model_ok: list[bool], base_images: list, model_images: list,
                       regions: list[tuple[np.ndarray, np.ndarray] | None] | None = None) -> KeepWhatIsRight:
    """The figures above for N paired images: ``base_ok`` / ``model_ok`` the verdicts (N,), the images
    as PIL or uint8 (H, W, 3) arrays, ``regions`` per base image its (problem, leave-alone) masks
    ((H, W) bool each; None where unknown; None: none known)."""
    b, m = np.asarray(base_ok, dtype=bool), np.asarray(model_ok, dtype=bool)
    if not (len(b) == len(m) == len(base_images) == len(model_images)):
        raise ValueError("base_ok, model_ok and the two image lists must pair up one to one")
    moved = [moved_pixels(np.asarray(x), np.asarray(y)) for x, y in zip(base_images, model_images)]
    right = [mv.mean() for mv, ok in zip(moved, b) if ok]
    changed = np.array([share >= CHANGED_SHARE for share in right], dtype=bool)
    inside, outside = [], []
    for mv, ok, reg in zip(moved, b, regions or [None] * len(moved)):
        if ok or reg is None:
            continue
        problem, keep = reg
        inside.append(mv[problem])
        outside.append(mv[keep])
    pooled = (lambda parts: _share(np.concatenate(parts)) if parts else None)
    return KeepWhatIsRight(
        fixed=float(m[~b].mean()) if (~b).any() else math.nan,
        broken=float((~m[b]).mean()) if b.any() else math.nan,
        n_base_wrong=int((~b).sum()), n_base_right=int(b.sum()),
        moved_base_right=float(np.mean(right)) if right else math.nan,
        moved_inside=pooled(inside), moved_outside=pooled(outside),
        broken_changed=float((~m[b] & changed).mean()) if b.any() else math.nan,
        unchanged=float((~changed).mean()) if b.any() else math.nan)
