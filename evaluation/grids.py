"""The one sample grid of every evaluation (the base card's grids, ``make eval``'s
samples-<model>.png, so the demo's before/after figure): a row per prompt, its text on the left and
its samples across, each framed green (the oracle says aligned) or red (not) when the oracle judged
them, on white otherwise; and the keep-what-is-right grid (:func:`keep_grid`): the base's images
with their problem regions tinted, beside every model's image of the same seed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALIGNED, NOT_ALIGNED, UNJUDGED = (40, 170, 60), (220, 40, 40), (255, 255, 255)


def sample_grid(rows: list[list[Image.Image]], labels: list[str],
                aligned: list[list[bool]] | None = None, pad: int = 3) -> Image.Image:
    """``rows[r]``: the samples of prompt ``labels[r]`` (every image the size of the first);
    ``aligned[r][c]``: the oracle's verdict on ``rows[r][c]``, or None when nothing judged them."""
    if not rows or len(rows) != len(labels) or not all(rows):
        raise ValueError("sample_grid needs one label and at least one image per row")
    w, h = rows[0][0].size
    # The font grows with the images so a label stays legible beside 512-px samples; at the shapes
    # world's 64 px it is Pillow's default size.
    font = ImageFont.load_default(size=max(10, min(w, h) // 6))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), t, font=font) for t in labels]
    label_w = max(b[2] for b in boxes) + 2 * max(4, pad)
    cell_w, cell_h = w + 2 * pad, h + 2 * pad
    k = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_w + k * cell_w, len(rows) * cell_h), UNJUDGED)
    draw = ImageDraw.Draw(grid)
    for r, (row, text, box) in enumerate(zip(rows, labels, boxes)):
        y0 = r * cell_h
        draw.text((max(4, pad), y0 + (cell_h - (box[3] - box[1])) // 2 - box[1]), text, fill=(0, 0, 0), font=font)
        for c, image in enumerate(row):
            x0 = label_w + c * cell_w
            if aligned is not None:
                draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + cell_h - 1],
                               fill=ALIGNED if aligned[r][c] else NOT_ALIGNED)
            image = image.convert("RGB")
            grid.paste(image if image.size == (w, h) else image.resize((w, h)), (x0 + pad, y0 + pad))
    return grid


def tint(image: Image.Image, mask: np.ndarray, colour=(255, 0, 0), alpha: float = 0.5) -> Image.Image:
    """``image`` with the pixels of ``mask`` (H, W bool, the image's size) blended with ``colour``."""
    arr = np.asarray(image.convert("RGB")).astype(np.float32)
    arr[mask] = (1 - alpha) * arr[mask] + alpha * np.asarray(colour, np.float32)
    return Image.fromarray(arr.round().astype(np.uint8))


def keep_grid(rows: list[list[Image.Image]], labels: list[str], aligned: list[list[bool]],
              masks: list[np.ndarray]) -> Image.Image:
    """A row per base image: ``rows[r]`` = [base, model 1, ...] from one seed, framed by the oracle's
    verdicts ``aligned[r]``; the base's problem region ``masks[r]`` (H, W bool) tinted red on it."""
    tinted = [[tint(row[0], m), *row[1:]] for row, m in zip(rows, masks)]
    return sample_grid(tinted, labels, aligned)
