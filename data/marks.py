"""Region marks: where a rater says an image is wrong (Rich Human Feedback, Liang et al. 2024).

A rater who answers *bad* may click points on the image where it is wrong and mark the prompt's
words that are wrong.  One ``marks`` row belongs to one binary answer (``label_id``), so undoing the
answer (a retraction of that label) takes its marks back too.  Points are fractions of the image
(x to the right, y down, both in [0, 1]), so they hold for any image size; words are indices into
:func:`prompt_words` of the prompt.

Heatmaps follow RichHF: each rater's clicks become disks, and the raters' disk maps are averaged
(a rater who answered the image without marking a point counts as an empty map).

Readers go through :func:`current_marks` (marks of answers that still stand: a retracted label, or
a marks row whose label was never written, is left out) and :func:`image_marks` (per image, one
entry per rater who answered it good or bad).  The labeling app writes a marks row before its
label row (:mod:`labeling_app.answers`), so a crash between the two leaves marks that no reader sees.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import DataError
from data.labels import current
from data.schemas import (BINARY_LABELS, GENERATIONS, POINTS, TIMESTAMP, WORDS, TableSpec, _check_mark_columns,
                          _check_not_empty_strings, _f, _schema, register)
from data.store import PART_GLOB, Store

# RichHF's disks: radius 20 px on its 512 px images, as a fraction of the image side.
DISK_RADIUS = 20 / 512


PROMPT_WORDS_RULE = "split at each run of whitespace (spaces, tabs, line breaks: Python's `str.split()`)"
"""How :func:`prompt_words` splits a prompt, in words: the HF export's dataset card states it."""


def prompt_words(prompt: str) -> list[str]:
    """The prompt's words, in order: the prompt :data:`PROMPT_WORDS_RULE`, so ``"two  red\tcircles"``
    has three.  The one rule for prompt words: the app's word chips, the ``words`` of the marks and
    gold tables and the HF export's ``prompt_misalignment_label`` all count these."""
    return prompt.split()


def _check_marks(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("label_id", "image_id", "prompt_id", "rater_id"))
    _check_mark_columns(table, "marks")


MARKS = register(TableSpec(
    name="marks",
    schema=_schema("marks", [
        _f("label_id", pa.string()),          # the binary_labels answer (label 'bad') these marks belong to
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("rater_id", pa.string()),
        _f("points", POINTS),  # where it is wrong, (x, y) in [0, 1]
        _f("words", WORDS),    # wrong words: prompt_words() indices
        # why nothing could be marked (marks=required: e.g. a missing object); null when not given
        _f("note", pa.string(), nullable=True),
        _f("created_at", TIMESTAMP),
    ]),
    key=("label_id",),
    check=_check_marks,
    defaults={"note": None},
    since=3,
))


def _is_number(v) -> bool:
    """A JSON number (or numpy's): not a string such as "01", which would read as two digits, and
    not a boolean, which Python counts as 0 or 1."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check_marks(points, words, n_words: int) -> tuple[list[tuple[float, float]], list[int]]:
    """One answer's marks as the table stores them (points as (x, y) floats, words sorted and
    unique), or a DataError naming the first bad one: a point that is not two numbers in [0, 1], a
    word index that is not a whole number in [0, ``n_words``)."""
    out_points = []
    for p in points or ():
        try:
            if not (isinstance(p, (list, tuple, np.ndarray)) and len(p) == 2 and all(map(_is_number, p))):
                raise TypeError
            x, y = (float(v) for v in p)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"the point {reprlib.repr(p)} is not two numbers (x, y).",
                            "a point is (x, y), fractions of the image in [0, 1].") from None
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise DataError(f"the point ({x:g}, {y:g}) is outside the image.",
                            "click on the image itself: x and y are fractions of the image in [0, 1].")
        out_points.append((x, y))
    out_words = set()
    for w in words or ():
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
            raise DataError(f"the word index {reprlib.repr(w)} is not a whole number.", "words are counted from 0.")
        if not 0 <= w < n_words:
            raise DataError(f"the word index {reprlib.repr(w)} is past the prompt's {n_words} words.",
                            f"mark words 0..{n_words - 1} of the prompt." if n_words else "mark no words: the prompt has none.")
        out_words.add(int(w))
    return out_points, sorted(out_words)


def read_marks(store: Store) -> pa.Table:
    """Every ``marks`` row as stored (:meth:`Store.read`), each row's word indices checked against
    its image's prompt: an index past the prompt's :func:`prompt_words` is a DataError naming the
    part file and row.  The schema's own check (:func:`data.schemas._check_mark_columns`) sees one
    part at a time, without the prompts, so it refuses only negative indices; every reader of the
    table comes through here, so an export or a reward never carries, or silently drops, a word
    the prompt does not have.  Rows of an image the generations table lacks are left unchecked."""
    marks = store.read(MARKS)
    if not marks.num_rows:
        return marks
    gens = store.read(GENERATIONS).select(["image_id", "prompt"]).to_pydict()
    n_words = {i: len(prompt_words(p)) for i, p in zip(gens["image_id"], gens["prompt"])}
    for label_id, image_id, words in zip(*(marks[c].to_pylist() for c in ("label_id", "image_id", "words"))):
        n = n_words.get(image_id)
        if n is not None and words and max(words) >= n:
            prompt = gens["prompt"][gens["image_id"].index(image_id)]
            raise DataError(f"{_where(store, label_id)}: the word index {max(words)} is past the {n} "
                            f"word(s) of its image's prompt {prompt!r}.",
                            "word indices count the prompt's words (data.marks.prompt_words: split at "
                            "whitespace) from 0, and the labeling app never writes another; correct "
                            "that row's words (or remove the row) in the part file.")
    return marks


def _where(store: Store, label_id: str) -> str:
    """The part file and row (from 0) of the marks row of ``label_id``, for an error message."""
    for part in sorted(store.table_dir(MARKS).glob(PART_GLOB)):
        try:
            ids = pq.read_table(part, columns=["label_id"]).column("label_id").to_pylist()
        except (FileNotFoundError, pa.ArrowException, OSError):
            continue  # merged away meanwhile
        if label_id in ids:
            return f"{part}, row {ids.index(label_id)} (label_id {label_id})"
    return f"{store.table_dir(MARKS)}, the row of label_id {label_id}"


def current_marks(store: Store) -> pa.Table:
    """The marks rows whose answer stands: its ``binary_labels`` row exists, is not retracted
    (an undo takes the marks back) and says bad (:func:`read_marks`: checked against the prompts)."""
    marks = read_marks(store)
    if not marks.num_rows:
        return marks
    labels = current(store, BINARY_LABELS.name)
    bad = pc.filter(labels["label_id"], pc.equal(labels["label"], "bad"))
    return marks.filter(pc.is_in(marks["label_id"], value_set=bad))


@dataclass
class ImageMarks:
    """The marks of one image: one entry per rater who answered it good or bad (skips left out),
    in the order of ``raters``; a good answer, or a bad one without marks, has none."""
    image_id: str
    prompt: str
    raters: list[str] = field(default_factory=list)
    points: list[list[tuple[float, float]]] = field(default_factory=list)
    words: list[list[int]] = field(default_factory=list)

    @property
    def marked(self) -> bool:
        return any(self.points) or any(self.words)

    def heatmap(self, size: tuple[int, int]) -> np.ndarray:
        """The averaged disk heatmap, float32 (H, W) = ``size`` in [0, 1]."""
        return heatmap(self.points, size)

    def word_labels(self) -> list[int]:
        """RichHF's ``prompt_misalignment_label``: one 0/1 per :func:`prompt_words` word, 0 when at
        least half of the image's raters marked the word as wrong."""
        n = len(self.raters)
        counts = np.zeros(len(prompt_words(self.prompt)), dtype=int)
        for ws in self.words:
            counts[[w for w in ws if w < len(counts)]] += 1
        return [0 if n and 2 * c >= n else 1 for c in counts]


def image_marks(store: Store) -> dict[str, ImageMarks]:
    """Every image with a current good or bad answer, and its raters' marks (:class:`ImageMarks`)."""
    labels = current(store, BINARY_LABELS.name).to_pandas()
    labels = labels[labels["label"] != "skip"].sort_values(["image_id", "created_at"], kind="stable")
    if labels.empty:
        return {}
    prompts = store.to_pandas(GENERATIONS).set_index("image_id")["prompt"]
    by_label = {r["label_id"]: r for r in current_marks(store).to_pylist()}
    out: dict[str, ImageMarks] = {}
    for r in labels.itertuples():
        im = out.setdefault(r.image_id, ImageMarks(r.image_id, str(prompts.get(r.image_id, ""))))
        m = by_label.get(r.label_id)
        im.raters.append(r.rater_id)
        im.points.append([(p["x"], p["y"]) for p in m["points"]] if m else [])
        im.words.append(list(m["words"]) if m else [])
    return out


def disk_map(points: list[tuple[float, float]], size: tuple[int, int], radius: float = DISK_RADIUS) -> np.ndarray:
    """One rater's clicks as a 0/1 map of shape (H, W) = ``size``: the union of disks of ``radius``
    (a fraction of the image's shorter side, at least one pixel) around each (x, y) point in [0, 1]."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (xx + 0.5) / w, (yy + 0.5) / h  # pixel centres as fractions
    r = max(radius * min(h, w), 1.0)  # at least a pixel, so a click always shows on a small map
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


def heatmap_u8(points_by_rater: list[list[tuple[float, float]]], size: tuple[int, int]) -> np.ndarray:
    """:func:`heatmap` as RichHF-18K stores it: uint8 (H, W), 0..255."""
    return np.round(heatmap(points_by_rater, size) * 255).astype(np.uint8)
