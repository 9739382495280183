"""The programmatic judge: does an image show its shapes-world prompt?

Classical image analysis only (no learned model), so it is an evaluator independent of every model
the project trains:

1. Smooth with a Gaussian (sigma 1 px at 64x64): grain from sampling noise averages out, and a
   uniform-noise image collapses towards flat grey.
2. Background = median of the border pixels, snapped to the nearest background colour (unknown if
   none is within ``COLOR_TOLERANCE``).
3. Segmentation: each pixel goes to the nearest of {object colours, detected background}; object
   pixels further than ``COLOR_TOLERANCE`` from their colour are dropped.  This only groups pixels
   into objects (``Blob.nearest``); it is not the colour verdict.
4. Connected components per colour (``scipy.ndimage.label``); blobs under a quarter of the smallest
   object's area are specks and ignored.
4b. Colour verdict, per object, as a person would name it: the median CIELAB colour of the blob's
   core (its edge pixels mix with the background) must lie in a palette colour's band: CIELAB hue
   within ``HUE_BANDS`` of that colour's hue, chroma at least ``MIN_CHROMA`` of its chroma,
   lightness within ``LIGHTNESS_TOLERANCE``.  Hue separates what RGB distance does not: orange
   (240, 150, 30) is 55 RGB units from the palette's yellow but 24 degrees of hue away, where a
   person says "orange".  A blob in no band is *off palette* (``Blob.color`` None): it still
   counts as an object, matches no colour, and is counted in ``Verdict.n_off_palette``.
5. Each blob's shape from corner occupancy + fill ratio.  Corner occupancy is the filled share of
   the four corner patches of its bounding box (each 20 % of the side): a circle leaves them
   nearly empty, a square fills them.  Fill ratio is area / bounding-box area (circle ~0.79,
   square 1).  Alone, each overlapped on blurred, noisy renders once a small square's corners were
   eaten by blur; their sum separated all 7,440 blobs of 3,000 degraded renders (circle <= 1.227,
   square >= 1.261).  Blobs outside the size, aspect-ratio or fill bounds are "unknown", which
   matches no prompt.

Verdicts are per attribute the prompt specifies (count and shape always, colour and background when
given); ``aligned`` is their conjunction.  About 1 ms per 64x64 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from shapes.colorspace import hue_difference, lab_to_lch, srgb_to_lab
from shapes.render import DEFAULT_SIZE, SIZE_RANGE
from shapes.world import BACKGROUNDS, CATEGORIES, COLORS, Prompt

COLOR_TOLERANCE = 110.0  # max RGB distance (0-255 units) from a palette colour: segmentation only
# Colour verdict bands around each palette colour's CIELAB hue (degrees, towards lower and higher
# hue).  Each ends at least 5 degrees short of the hues people name by another colour
# (shapes.hue_sweep: a name border plus its guard), and no narrower than the VAE's round trip
# of a correct render needs (it pulls yellow towards amber, red towards orange), nor than the
# base model's own renderings of a colour need (its lemon yellows sit above the palette's hue):
# `make oracle-check` sweeps hues across them, and measures the agreement on base samples.
HUE_BANDS: dict[str, tuple[float, float]] = {
    "red": (12.0, 14.0),
    "yellow": (12.0, 18.0),
    "green": (16.0, 18.0),
    "blue": (25.0, 12.0),
}
MIN_CHROMA = 0.5  # fraction of the palette colour's CIELAB chroma: paler reads as grey or pastel
LIGHTNESS_TOLERANCE = 25.0  # CIELAB L* units: darker reads as brown / olive / navy, lighter as pastel
CORE_ERODE = 1.0  # px at 64x64 peeled off a blob before its median colour is taken
SMOOTH_SIGMA = 1.0  # pixels at 64x64
SQUARE_SCORE = 1.245  # corners + fill: between circle (<= 1.227) and square (>= 1.261)
CORNER = 0.2  # corner patch side, fraction of the bounding box side
MIN_FILL = 0.62  # below this a blob is no shape we draw
MAX_ASPECT = 1.5
SIZE_SLACK = (0.6, 1.5)  # allowed blob side relative to the renderer's SIZE_RANGE

# The figures every evaluation reports (make eval, the demo, the base model's card), in this order;
# alignment_by_category also gives "shape" and per-category figures for closer looks.
ALIGNMENT_KEYS = ("color", "count", "background", "combination", "overall")

_OBJ_NAMES = tuple(COLORS)
_OBJ_RGB = np.array([COLORS[c] for c in _OBJ_NAMES], dtype=np.float32)  # (C, 3)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float32)  # (B, 3)
_OBJ_LCH = lab_to_lch(srgb_to_lab(_OBJ_RGB))  # (C, 3)


def name_color(rgb) -> str | None:
    """The palette colour a person would call this sRGB colour ((3,) in 0-255), or None when it
    is in no palette colour's band (off palette): see the module docstring, step 4b."""
    lightness, chroma, hue = lab_to_lch(srgb_to_lab(np.asarray(rgb, dtype=np.float64)))
    for name, (ref_l, ref_c, ref_h) in zip(_OBJ_NAMES, _OBJ_LCH):
        below, above = HUE_BANDS[name]
        if (-below <= hue_difference(hue, ref_h) <= above and chroma >= MIN_CHROMA * ref_c
                and abs(lightness - ref_l) <= LIGHTNESS_TOLERANCE):
            return name
    return None


@dataclass(frozen=True)
class Blob:
    color: str | None  # the colour verdict (name_color of its median); None: off palette
    shape: str  # circle | square | unknown
    area: int
    fill: float
    corners: float
    nearest: str  # the palette colour its pixels were grouped by (segmentation, RGB distance)
    median_rgb: tuple[int, int, int]  # typical colour of its core (smoothed image, 0-255)


# Verdict.score of an aligned image is exactly 3 and of any other image below 1 (some verdict
# fails), so this threshold on a graded score recovers the aligned verdict.
ALIGNED_MIN_SCORE = 2.0


@dataclass(frozen=True)
class Verdict:
    """The oracle's judgement of one image.  ``color``/``background`` are None when the prompt
    does not specify them."""

    count: bool
    shape: bool
    color: bool | None
    background: bool | None
    aligned: bool
    n_objects: int
    detected_background: str | None
    blobs: tuple[Blob, ...]
    n_off_palette: int  # objects whose colour is in no palette colour's band

    def score(self, prompt: Prompt) -> float:
        """A graded match, at most 3: 2 for aligned, plus the share of attribute verdicts that
        hold, minus a quarter per missing or extra object (so below 0 for a crowded failure).
        An aligned image scores exactly 3, any other below 1.  Used to rank images."""
        verdicts = [getattr(self, a) for a in prompt.specified]
        share = sum(bool(v) for v in verdicts) / len(verdicts)
        return 2.0 * self.aligned + share - 0.25 * abs(self.n_objects - prompt.count)


def _as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square HxWx3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return image


def detect(image) -> tuple[str | None, tuple[Blob, ...]]:
    """The background colour name (or None) and the object blobs of an image."""
    background, blobs, _ = detect_with_masks(image)
    return background, blobs


def detect_with_masks(image) -> tuple[str | None, tuple[Blob, ...], tuple[np.ndarray, ...]]:
    """:func:`detect`, plus each blob's pixels: one (H, W) bool mask per blob, in blob order
    (the segmentation's pixels, so a blob's anti-aliased edge may lie just outside it)."""
    img = _as_array(image).astype(np.float32)
    side = img.shape[0]
    scale = side / DEFAULT_SIZE
    img = ndimage.gaussian_filter(img, sigma=(SMOOTH_SIGMA * scale, SMOOTH_SIGMA * scale, 0))

    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # (4*side, 3)
    bg_rgb = np.median(border, axis=0)
    bg_dist = np.linalg.norm(_BG_RGB - bg_rgb, axis=1)
    bg_idx = int(np.argmin(bg_dist))
    background = _BG_NAMES[bg_idx] if bg_dist[bg_idx] < COLOR_TOLERANCE else None
    ref_bg = _BG_RGB[bg_idx] if background is not None else bg_rgb

    # Distances of every pixel to every object colour and to the background: (H, W, C+1).
    palette = np.concatenate([_OBJ_RGB, ref_bg[None]], axis=0)
    dist = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)
    nearest = np.argmin(dist, axis=-1)
    near_enough = np.take_along_axis(dist, nearest[..., None], axis=-1)[..., 0] < COLOR_TOLERANCE

    min_side, max_side = SIZE_RANGE[0] * side, SIZE_RANGE[1] * side
    min_area = 0.25 * (np.pi / 4) * min_side**2
    blobs, masks = [], []
    for ci, cname in enumerate(_OBJ_NAMES):
        mask = (nearest == ci) & near_enough
        if not mask.any():
            continue
        labels, n = ndimage.label(mask)
        for sl, idx in zip(ndimage.find_objects(labels), range(1, n + 1)):
            blob = labels[sl] == idx  # (h, w) bool, the blob inside its bounding box
            area = int(blob.sum())
            if area < min_area:
                continue  # a speck of noise or a blurred edge
            h, w = blob.shape
            k = max(1, round(CORNER * min(h, w)))
            corners = float(np.mean([blob[:k, :k].mean(), blob[:k, -k:].mean(),
                                     blob[-k:, :k].mean(), blob[-k:, -k:].mean()]))
            fill = area / float(h * w)
            shape = _classify(h, w, fill, corners, min_side, max_side)
            typical = _median_color(img[sl], blob, scale)
            blobs.append(Blob(name_color(typical), shape, area, fill, corners, cname,
                              tuple(int(round(float(v))) for v in typical)))
            full = np.zeros(mask.shape, dtype=bool)
            full[sl] = blob
            masks.append(full)
    return background, tuple(blobs), tuple(masks)


def _median_color(patch: np.ndarray, blob: np.ndarray, scale: float) -> np.ndarray:
    """The median RGB (3,) of a blob's core: ``patch`` (h, w, 3) its bounding box of the smoothed
    image, ``blob`` (h, w) its mask.  The core is the mask eroded by ``CORE_ERODE`` px (scaled),
    since edge pixels blend with the background; the whole mask when erosion leaves nothing."""
    core = ndimage.binary_erosion(blob, iterations=max(1, round(CORE_ERODE * scale)))
    return np.median(patch[core if core.any() else blob], axis=0)


def _classify(h: int, w: int, fill: float, corners: float, min_side: float, max_side: float) -> str:
    aspect = max(h, w) / max(1, min(h, w))
    side = max(h, w)
    if (aspect > MAX_ASPECT or fill < MIN_FILL
            or not SIZE_SLACK[0] * min_side <= side <= SIZE_SLACK[1] * max_side):
        return "unknown"
    return "square" if corners + fill >= SQUARE_SCORE else "circle"


def judge(image, prompt: Prompt | str) -> Verdict:
    """Judge ``image`` (PIL image or uint8 HxWx3 array) against ``prompt``."""
    if isinstance(prompt, str):
        prompt = Prompt.parse(prompt)
    background, blobs = detect(image)
    n = len(blobs)
    count_ok = n == prompt.count
    shape_ok = n > 0 and all(b.shape == prompt.shape for b in blobs)
    color_ok = None if prompt.color is None else (n > 0 and all(b.color == prompt.color for b in blobs))
    bg_ok = None if prompt.background is None else background == prompt.background
    aligned = count_ok and shape_ok and color_ok is not False and bg_ok is not False
    return Verdict(count_ok, shape_ok, color_ok, bg_ok, aligned, n, background, blobs,
                   sum(b.color is None for b in blobs))


def off_palette_share(verdicts: list[Verdict]) -> float:
    """Share of all detected objects whose colour is off palette (NaN when none was detected):
    the hacking alarm's figure, since a model drifting to a colour the oracle rejects shows here."""
    n = sum(v.n_objects for v in verdicts)
    return sum(v.n_off_palette for v in verdicts) / n if n else float("nan")


def alignment_by_category(prompts: list[Prompt], verdicts: list[Verdict]) -> dict[str, float]:
    """Alignment figures as in Lee et al.'s tables, from per-image verdicts.

    ``color`` / ``count`` / ``background``: the share of images whose verdict on that attribute
    holds, over the images whose prompt specifies it; ``combination``: the share aligned among
    combination-category prompts; ``overall``: the share aligned among all images.  A figure with
    no eligible image is NaN.
    """
    def mean(xs):
        return float(np.mean(xs)) if len(xs) else float("nan")

    pv = list(zip(prompts, verdicts))
    out = {
        "color": mean([v.color for p, v in pv if p.color is not None]),
        "count": mean([v.count for _, v in pv]),
        "shape": mean([v.shape for _, v in pv]),
        "background": mean([v.background for p, v in pv if p.background is not None]),
        "combination": mean([v.aligned for p, v in pv if p.category == "combination"]),
        "overall": mean([v.aligned for _, v in pv]),
    }
    for c in CATEGORIES:
        out[f"aligned_{c}_prompts"] = mean([v.aligned for p, v in pv if p.category == c])
    return out
