"""Region marks: where a rater says an image is wrong (Rich Human Feedback, Liang et al. 2024).

A rater who answers *bad* may click points on the image where it is wrong and mark the prompt's
words that are wrong.  One ``marks`` row belongs to one binary answer (``label_id``), so undoing the
answer (a retraction of that label) takes its marks back too.  Points are fractions of the image
(x to the right, y down, both in [0, 1]), so they hold for any image size; words are indices into
:func:`prompt_words` of the prompt.

Heatmaps follow RichHF: each rater's clicks become disks, and the raters' disk maps are averaged
(a rater who answered the image without marking a point counts as an empty map).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.errors import DataError
from data.schemas import TIMESTAMP, TableSpec, _check_not_empty_strings, _f, _schema, register

POINT = pa.struct([pa.field("x", pa.float32(), nullable=False), pa.field("y", pa.float32(), nullable=False)])

# RichHF's disks: radius 20 px on its 512 px images, as a fraction of the image side.
DISK_RADIUS = 20 / 512


def prompt_words(prompt: str) -> list[str]:
    """The prompt as the app shows it for marking: its whitespace-separated words, in order."""
    return prompt.split()


def _check_marks(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("label_id", "image_id", "prompt_id", "rater_id"))
    for row, points in enumerate(table.column("points").to_pylist()):
        for p in points:
            if not (0.0 <= p["x"] <= 1.0 and 0.0 <= p["y"] <= 1.0):
                raise DataError(f"marks row {row} has the point ({p['x']}, {p['y']}) outside the image.",
                                "points are fractions of the image: x and y in [0, 1].")
    for row, words in enumerate(table.column("words").to_pylist()):
        if any(w < 0 for w in words):
            raise DataError(f"marks row {row} has a negative word index {min(words)}.",
                            "word indices count the prompt's words from 0.")


MARKS = register(TableSpec(
    name="marks",
    schema=_schema("marks", [
        _f("label_id", pa.string()),          # the binary_labels answer (label 'bad') these marks belong to
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("rater_id", pa.string()),
        _f("points", pa.list_(pa.field("item", POINT, nullable=False))),  # where it is wrong, (x, y) in [0, 1]
        _f("words", pa.list_(pa.field("item", pa.int32(), nullable=False))),  # wrong words: prompt_words() indices
        _f("created_at", TIMESTAMP),
    ]),
    key=("label_id",),
    check=_check_marks,
))


def disk_map(points: list[tuple[float, float]], size: tuple[int, int], radius: float = DISK_RADIUS) -> np.ndarray:
    """One rater's clicks as a 0/1 map of shape (H, W) = ``size``: the union of disks of ``radius``
    (a fraction of the image's shorter side) around each (x, y) point in [0, 1]."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (xx + 0.5) / w, (yy + 0.5) / h  # pixel centres as fractions
    r = radius * min(h, w)
    out = np.zeros((h, w), dtype=bool)
    for x, y in points:
        out |= (cx * w - x * w) ** 2 + (cy * h - y * h) ** 2 <= r * r
    return out.astype(np.float32)


def heatmap(points_by_rater: list[list[tuple[float, float]]], size: tuple[int, int],
            radius: float = DISK_RADIUS) -> np.ndarray:
    """The raters' averaged disk maps, float32 (H, W) in [0, 1]; one list of points per rater who
    answered the image (empty: answered without marking).  No raters: all zeros."""
    if not points_by_rater:
        return np.zeros(size, dtype=np.float32)
    return np.mean([disk_map(p, size, radius) for p in points_by_rater], axis=0).astype(np.float32)
