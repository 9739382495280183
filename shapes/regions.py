"""Where a shapes-world image is wrong: the oracle's exact problem regions and wrong prompt words.

:func:`problem_regions` follows the oracle's verdict (:func:`shapes.oracle.judge`) object by
object, so an image has an empty mask, no wrong word and no missing object exactly when the
oracle calls it aligned.  What it marks:

- **wrong objects**: a blob whose shape is not the prompt's (``unknown`` included) or, when the
  prompt names a colour, whose colour verdict is not that colour (off palette included);
- **extra objects**: with more objects than the prompt's count, the wrong objects count as the
  surplus first; any surplus left is the smallest right-looking objects;
- **a wrong background**: every pixel outside the objects;
- **missing objects** have no region to click: the mask stays empty for them, they are counted
  in ``missing``, and only their word is marked.

Object masks are the oracle's segmentation dilated by 1 px (scaled to the image side), so the
anti-aliased edge of a wrong object is inside its region.

Words are indices into :func:`data.marks.prompt_words` of the prompt's canonical text
(:attr:`shapes.world.Prompt.text`, what rounds record): the count word when the count is wrong
(extra or missing objects), the noun ("circles") when an object has the wrong shape or none was
drawn at all, the colour word when an object has the wrong colour, the background's colour word
when the background is wrong.

``keep`` is what a region-aware fine-tuning penalty protects ("keep what is right").  With no
missing object it is the complement of the mask.  When an object is missing, the fix must draw
it somewhere in the unmarked background, so forbidding change everywhere unmarked would forbid
the fix: ``keep`` is then only the right objects' pixels.

This is ground truth for evaluation: simulated raters see only the mask and words through
:func:`shapes.raters.click_marks`, which adds their position noise and misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shapes.oracle import detect_with_masks
from shapes.render import DEFAULT_SIZE
from shapes.world import Prompt

EDGE_DILATION = 1.0  # px at 64x64 added around an object's segmented pixels


@dataclass(frozen=True)
class ProblemRegions:
    mask: np.ndarray  # (H, W) bool: pixels that are wrong (wrong or extra objects, a wrong background)
    keep: np.ndarray  # (H, W) bool: pixels that are right and a fix should leave alone
    words: tuple[int, ...]  # wrong words, sorted: indices into data.marks.prompt_words(prompt.text)
    missing: int  # objects the prompt asks for that the image lacks (no region, only a word)

    @property
    def aligned(self) -> bool:
        return not self.mask.any() and not self.words and self.missing == 0


def word_index(prompt: Prompt, attribute: str) -> int:
    """The index in ``prompt_words(prompt.text)`` of the word carrying ``attribute``: count, color,
    shape (the noun) or background (its colour word)."""
    shape_at = 2 if prompt.color else 1
    at = {"count": 0, "color": 1 if prompt.color else None, "shape": shape_at,
          "background": shape_at + 3 if prompt.background else None}[attribute]  # "... on a <bg> background"
    if at is None:
        raise ValueError(f"{prompt.text!r} has no {attribute} word")
    return at


def problem_regions(image, prompt: Prompt | str) -> ProblemRegions:
    """The oracle's exact problem regions of ``image`` (PIL image or uint8 HxWx3) for ``prompt``:
    see the module docstring for what is marked and what ``keep`` protects."""
    if isinstance(prompt, str):
        prompt = Prompt.parse(prompt)
    background, blobs, masks = detect_with_masks(image)
    side = masks[0].shape[0] if masks else np.asarray(image).shape[0]
    grow = max(1, round(EDGE_DILATION * side / DEFAULT_SIZE))
    wrong_shape = [b.shape != prompt.shape for b in blobs]
    wrong_color = [prompt.color is not None and b.color != prompt.color for b in blobs]
    wrong = [s or c for s, c in zip(wrong_shape, wrong_color)]
    right = [i for i, w in enumerate(wrong) if not w]
    surplus = len(blobs) - prompt.count - sum(wrong)
    extra = set(sorted(right, key=lambda i: (blobs[i].area, i))[:max(0, surplus)])  # smallest first
    marked = [i for i in range(len(blobs)) if wrong[i] or i in extra]
    kept = [i for i in right if i not in extra]

    def union(idx: list[int]) -> np.ndarray:
        out = np.zeros((side, side), dtype=bool)
        for i in idx:
            out |= masks[i]
        return ndimage.binary_dilation(out, iterations=grow) if out.any() else out

    objects = union(list(range(len(blobs))))
    mask = union(marked)
    bg_wrong = prompt.background is not None and background != prompt.background
    if bg_wrong:
        mask |= ~objects
    missing = max(0, prompt.count - len(blobs))
    keep = ~mask if missing == 0 else union(kept) & ~mask

    words = set()
    if len(blobs) != prompt.count:
        words.add(word_index(prompt, "count"))
    if any(wrong_shape) or not blobs:
        words.add(word_index(prompt, "shape"))
    if any(wrong_color):
        words.add(word_index(prompt, "color"))
    if bg_wrong:
        words.add(word_index(prompt, "background"))
    return ProblemRegions(mask, keep, tuple(sorted(words)), missing)


REFERENCE_STEP = 0.05  # lattice spacing of a gold item's reference points, as a fraction of the image side


def reference_marks(truth: ProblemRegions) -> tuple[list[tuple[float, float]], list[int]]:
    """The marks of a careful rater who clicks everywhere ``truth`` is wrong: points (x, y) in
    [0, 1] on a lattice every :data:`REFERENCE_STEP` of the side inside the problem mask, plus each
    connected region's deepest pixel (so that a region smaller than the lattice has one), and the
    wrong words.  A gold item's reference marks (:mod:`labeling_app.gold`), to which raters' clicks
    are compared."""
    mask = truth.mask
    h, w = mask.shape
    step = max(1, round(REFERENCE_STEP * min(h, w)))
    on_lattice = np.zeros_like(mask)
    on_lattice[step // 2::step, step // 2::step] = True
    rows, cols = np.nonzero(mask & on_lattice)
    points = {(int(r), int(c)) for r, c in zip(rows, cols)}
    labelled, n = ndimage.label(mask)
    if n:
        depth = ndimage.distance_transform_edt(mask)
        points |= {(int(r), int(c)) for r, c in ndimage.maximum_position(depth, labelled, range(1, n + 1))}
    return [((c + 0.5) / w, (r + 0.5) / h) for r, c in sorted(points)], list(truth.words)
