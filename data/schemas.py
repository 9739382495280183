"""Canonical Parquet schemas: the data contract between every stage.

One module, imported by every writer and every reader (the labeling app, the simulated raters,
``make generate``, the reward trainer, analysts).  Each table is a :class:`TableSpec`: its Arrow
schema (with ``schema_version`` in the schema metadata), the columns that identify a row (rows
repeated under the same key are dropped on read), and value checks that Arrow types cannot express
(a label is good|bad|skip, ranks form an ordering).

Tables on disk live at ``<dataset root>/<table name>/part-*.parquet``; see :mod:`data.store`.
Bringing input to a spec's columns and types (:func:`~data.conform.conform`,
:func:`~data.conform.from_rows`) is :mod:`data.conform`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import pyarrow as pa
import pyarrow.compute as pc

from core.errors import DataError

# 2: generations gained round, model_fingerprint and run (the closed loop's rounds); a version-1
# part reads with round 0 and no fingerprint or run (TableSpec.defaults), and `make migrate`
# rewrites a root's parts in the current version.  3: the marks table (data.marks); a root
# without it reads it as empty, and `make migrate` gives it an empty part.  4: gold items gained
# reference marks (``points``, ``words``); a version-3 gold part reads with none (null).
SCHEMA_VERSION = 4

TIMESTAMP = pa.timestamp("us", tz="UTC")
# A point of a region mark: fractions of the image, x to the right, y down, both in [0, 1].
POINT = pa.struct([pa.field("x", pa.float32(), nullable=False), pa.field("y", pa.float32(), nullable=False)])
POINTS = pa.list_(pa.field("item", POINT, nullable=False))
WORDS = pa.list_(pa.field("item", pa.int32(), nullable=False))  # word indices: data.marks.prompt_words()

Label = Literal["good", "bad", "skip"]
LABELS: tuple[str, ...] = ("good", "bad", "skip")


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    """Columns that identify a row; duplicates under one key are dropped on read (first kept)."""
    check: Callable[[pa.Table], None] | None = field(default=None, compare=False)
    """Raises DataError on values the types allow but the contract does not."""
    defaults: dict[str, object] = field(default_factory=dict, compare=False)
    """Values of columns added in a later schema version: a part written before has none, and
    reads (and appends that leave the column out) get this value."""
    since: int = field(default=1, compare=False)
    """The schema version that added the table: ``make migrate`` gives an older root an empty part."""


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"schema_version": str(SCHEMA_VERSION), "table": name})


def _f(name: str, typ: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, typ, nullable=nullable)


# ---------------------------------------------------------------------------------------------
# Value checks


def validate_ranks(ranks: list[int], n_images: int) -> list[int]:
    """Check that ``ranks`` orders ``n_images`` images; return them as plain ints.

    Ranks are dense: 1 is best, tied images share a rank, and the ranks used are exactly
    1..k for some k (so ``[1, 1, 2]`` is valid and ``[1, 1, 3]`` or ``[2, 3]`` are not).
    Raises :class:`DataError` with the reason otherwise.
    """
    ranks = [int(r) for r in ranks]
    if n_images < 2:
        raise DataError(f"a ranking needs at least 2 images, got {n_images}.",
                        "rank only prompts with two or more images.")
    if len(ranks) != n_images:
        raise DataError(f"got {len(ranks)} ranks for {n_images} images.", "give every image one rank.")
    used = sorted(set(ranks))
    if used != list(range(1, len(used) + 1)):
        raise DataError(
            f"ranks {ranks} are not an ordering.",
            "use ranks 1, 2, 3, ... with 1 the best; tied images share a rank and no rank is skipped "
            "(e.g. 1, 1, 2).",
        )
    return ranks


def _check_not_empty_strings(table: pa.Table, columns: tuple[str, ...]) -> None:
    for c in columns:
        if table.num_rows and pc.any(pc.equal(pc.utf8_length(table[c]), 0)).as_py():
            raise DataError(f"column '{c}' holds an empty string.", f"give every row a non-empty {c}.")


def _check_generations(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("image_id", "prompt_id", "prompt", "image_path", "sha256"))
    for c in ("height", "width", "num_inference_steps"):
        if table.num_rows and pc.min(table[c]).as_py() <= 0:
            raise DataError(f"column '{c}' holds a non-positive value.", f"{c} must be > 0.")
    if table.num_rows and pc.min(table["round"]).as_py() < 0:
        raise DataError("column 'round' holds a negative value.", "rounds count from 0.")
    for c in ("guidance_scale", "eta"):
        if table.num_rows and not pc.all(pc.is_finite(table[c])).as_py():
            raise DataError(f"column '{c}' holds NaN or infinity.", f"{c} must be a finite number.")


def _check_values(table: pa.Table, column: str, allowed: tuple[str, ...], what: str, fix: str) -> None:
    """Every value of ``column`` is one of ``allowed``; else one DataError naming the others."""
    bad = pc.invert(pc.is_in(table[column], value_set=pa.array(allowed)))
    if table.num_rows and pc.any(bad).as_py():
        raise DataError(f"{what} {sorted(set(pc.filter(table[column], bad).to_pylist()))} are not one of "
                        f"{list(allowed)}.", fix)


def _check_binary_labels(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("label_id", "image_id", "rater_id"))
    _check_values(table, "label", LABELS, "label values", "store 'good', 'bad' or 'skip'.")
    if table.num_rows and pc.min(table["duration_ms"]).as_py() < 0:
        raise DataError("column 'duration_ms' holds a negative value.", "durations are >= 0 ms.")


def _check_rankings(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("ranking_id", "prompt_id", "rater_id"))
    for image_ids, ranks in zip(table["image_ids"].to_pylist(), table["ranks"].to_pylist()):
        if len(set(image_ids)) != len(image_ids):
            raise DataError(f"a ranking lists an image twice: {image_ids}.", "rank each image once.")
        validate_ranks(ranks, len(image_ids))


def _check_pairs(table: pa.Table) -> None:
    total = pc.add(table["label_0"], table["label_1"])
    if table.num_rows and not pc.all(pc.less(pc.abs(pc.subtract(total, 1.0)), 1e-6)).as_py():
        raise DataError("pairs with label_0 + label_1 != 1.", "labels are 1/0, 0/1 or 0.5/0.5 (tie).")


# ---------------------------------------------------------------------------------------------
# The tables

GENERATIONS = TableSpec(
    name="generations",
    schema=_schema("generations", [
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("prompt", pa.string()),
        _f("category", pa.string()),          # colour | count | background | combination | other
        _f("model_id", pa.string()),          # the pipeline folder (or hub-style name) sampled from
        _f("seed", pa.int64()),
        _f("sampler", pa.string()),           # scheduler class name, e.g. DDIMScheduler
        _f("num_inference_steps", pa.int32()),
        _f("guidance_scale", pa.float32()),
        _f("eta", pa.float32()),
        _f("height", pa.int32()),
        _f("width", pa.int32()),
        _f("image_path", pa.string()),        # relative to the dataset root, POSIX separators
        _f("sha256", pa.string()),            # of the image file's bytes
        _f("created_at", TIMESTAMP),
        # -- schema version 2: rounds of the closed loop (data.rounds) --------------------------
        _f("round", pa.int32()),              # the labeling round the image was made for, from 0
        # what made the image: core.loading.model_fingerprint of the base pipeline, plus the
        # adapter's for a fine-tuned run ("<base>+<adapter>"); null for imports and renders
        _f("model_fingerprint", pa.string(), nullable=True),
        _f("run", pa.string(), nullable=True),  # the fine-tuned run folder sampled from; null: a base model
    ]),
    key=("image_id",),
    check=_check_generations,
    defaults={"round": 0, "model_fingerprint": None, "run": None},
)

BINARY_LABELS = TableSpec(
    name="binary_labels",
    schema=_schema("binary_labels", [
        _f("label_id", pa.string()),
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("rater_id", pa.string()),
        _f("label", pa.string()),             # good | bad | skip
        _f("skip_reason", pa.string(), nullable=True),
        _f("created_at", TIMESTAMP),
        _f("duration_ms", pa.int64()),        # time from showing the item to the answer
        _f("is_gold", pa.bool_()),            # a hidden item with a known answer
        _f("guideline_version", pa.string()),
    ]),
    key=("label_id",),
    check=_check_binary_labels,
)

RANKINGS = TableSpec(
    name="rankings",
    schema=_schema("rankings", [
        _f("ranking_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("rater_id", pa.string()),
        _f("image_ids", pa.list_(pa.string())),
        _f("ranks", pa.list_(pa.int32())),    # aligned with image_ids; 1 is best, ties share a rank
        _f("created_at", TIMESTAMP),
        _f("duration_ms", pa.int64()),
        _f("guideline_version", pa.string()),
    ]),
    key=("ranking_id",),
    check=_check_rankings,
)

# Derived from rankings, in the Pick-a-Pic style: one row per unordered pair of one ranking.
PAIRS = TableSpec(
    name="pairs",
    schema=_schema("pairs", [
        _f("ranking_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("rater_id", pa.string()),
        _f("image_0", pa.string()),
        _f("image_1", pa.string()),
        _f("label_0", pa.float32()),          # 1 if image_0 is preferred, 0.5 for a tie
        _f("label_1", pa.float32()),
        _f("created_at", TIMESTAMP),
    ]),
    key=("ranking_id", "image_0", "image_1"),
    check=_check_pairs,
)

def _check_retractions(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("retraction_id", "target_id", "rater_id"))
    _check_values(table, "target_table", RETRACTABLE, "retractions name tables",
                  f"only rows of {list(RETRACTABLE)} can be retracted.")


RETRACTABLE: tuple[str, ...] = ("binary_labels", "rankings")

# The store is append-only, so an undo is a row here; readers of labels go through
# data.labels.current(), which drops retracted rows.
RETRACTIONS = TableSpec(
    name="retractions",
    schema=_schema("retractions", [
        _f("retraction_id", pa.string()),
        _f("target_table", pa.string()),      # binary_labels | rankings
        _f("target_id", pa.string()),         # label_id or ranking_id
        _f("rater_id", pa.string()),          # who retracted it
        _f("created_at", TIMESTAMP),
    ]),
    key=("retraction_id",),
    check=_check_retractions,
)

# ---------------------------------------------------------------------------------------------
# Reward stage (reward/): scores written by `python -m pipelines.score_rewards`.


def _check_rewards(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("image_id", "reward_model"))
    if table.num_rows and not pc.all(pc.is_finite(table["reward"])).as_py():
        raise DataError("column 'reward' holds NaN or infinity.", "rewards must be finite numbers.")


# One row per (image, reward model): a retrained model has a new reward_model id (it includes a
# hash of the weights), so its scores sit beside the old ones instead of replacing them.
REWARDS = TableSpec(
    name="rewards",
    schema=_schema("rewards", [
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("reward_model", pa.string()),      # RewardModel.model_id: "<folder name>-<weights hash>"
        _f("reward", pa.float32()),           # RewardModel.score: P(rater says "good") in [0, 1]
        _f("model_path", pa.string()),        # the reward model folder it was scored with
        _f("created_at", TIMESTAMP),
    ]),
    key=("image_id", "reward_model"),
    check=_check_rewards,
)

# ---------------------------------------------------------------------------------------------
# The closed loop: which of a round's images go to raters (collect.selection writes it; the labeling
# app and the simulated raters serve only these when a round has any).

SelectionMethod = Literal["all", "random", "uncertain", "mix", "prompts"]
SELECTION_METHODS: tuple[str, ...] = ("all", "random", "uncertain", "mix", "prompts")


def _check_selections(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("image_id",))
    _check_values(table, "method", SELECTION_METHODS, "selection methods", f"use one of {list(SELECTION_METHODS)}.")


SELECTIONS = TableSpec(
    name="selections",
    schema=_schema("selections", [
        _f("image_id", pa.string()),
        _f("round", pa.int32()),              # the image's round (generations.round)
        _f("method", pa.string()),            # all | random | uncertain | mix
        # how unsure the reward was of the image when it was picked (higher: less sure); null for
        # random picks and method=all
        _f("uncertainty", pa.float32(), nullable=True),
        _f("reward_model", pa.string(), nullable=True),  # RewardModel.model_id that judged it; null: none
        _f("created_at", TIMESTAMP),
    ]),
    key=("image_id",),
    check=_check_selections,
)

TABLES: dict[str, TableSpec] = {
    t.name: t for t in (GENERATIONS, BINARY_LABELS, RANKINGS, PAIRS, RETRACTIONS, REWARDS, SELECTIONS)
}


def get_spec(table: str | TableSpec) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    try:
        return TABLES[table]
    except KeyError:
        raise DataError(f"unknown table '{table}'.", f"use one of {sorted(TABLES)}.") from None


def register(spec: TableSpec) -> TableSpec:
    """Add a table defined by a later stage (e.g. the labeling app's own bookkeeping)."""
    if spec.name in TABLES and TABLES[spec.name] is not spec:
        raise ValueError(f"table {spec.name!r} is already registered")
    TABLES[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------------------------
# Labeling app: gold answers (hidden items with a known answer, mixed into raters' streams)


def _check_mark_columns(table: pa.Table, name: str) -> None:
    """Region marks (``points``, ``words``; a null row has none) lie on the image and the prompt."""
    for row, points in enumerate(table.column("points").to_pylist()):
        for p in points or ():
            if not (0.0 <= p["x"] <= 1.0 and 0.0 <= p["y"] <= 1.0):
                raise DataError(f"{name} row {row} has the point ({p['x']}, {p['y']}) outside the image.",
                                "points are fractions of the image: x and y in [0, 1].")
    for row, words in enumerate(table.column("words").to_pylist()):
        if words and min(words) < 0:
            raise DataError(f"{name} row {row} has a negative word index {min(words)}.",
                            "word indices count the prompt's words from 0.")


def _check_gold(table: pa.Table) -> None:
    _check_not_empty_strings(table, ("image_id", "prompt_id", "answer", "source"))
    _check_values(table, "answer", ("good", "bad"), "gold answers", "a gold item's answer is 'good' or 'bad'.")
    _check_mark_columns(table, "gold")


GOLD = register(TableSpec(
    name="gold",
    schema=_schema("gold", [
        _f("image_id", pa.string()),
        _f("prompt_id", pa.string()),
        _f("answer", pa.string()),            # good | bad: the binary label a careful rater gives
        _f("source", pa.string()),            # oracle (shapes world) | file (a lead's gold file)
        _f("created_at", TIMESTAMP),
        # -- schema version 4: reference marks of a 'bad' gold item (labeling_app.gold); null: none given
        _f("points", POINTS, nullable=True),  # where it is wrong, (x, y) in [0, 1]
        _f("words", WORDS, nullable=True),    # the wrong words
    ]),
    key=("image_id",),
    check=_check_gold,
    defaults={"points": None, "words": None},
))


# ---------------------------------------------------------------------------------------------
# make import: where an imported image came from, and the columns of its source that the
# generations table has no place for (joined to generations on image_id).

IMPORTS = register(TableSpec(
    name="imports",
    schema=_schema("imports", [
        _f("image_id", pa.string()),
        _f("source", pa.string()),            # the metadata or listing file, absolute path
        _f("source_row", pa.int64()),         # 1-based data row of that file (header not counted)
        _f("file_name", pa.string()),         # the image as the source names it
        _f("extra", pa.string()),             # JSON object: the source's other columns of this row
        _f("created_at", TIMESTAMP),
    ]),
    key=("image_id",),
    check=lambda t: _check_not_empty_strings(t, ("image_id", "source", "file_name")),
))
