"""A round's labels as a Hugging Face dataset folder, images included (``make label-export
ARGS="format=hf"``).

Layout (the Hub's convention: one folder per config, ``<split>-NNNNN-of-NNNNN.parquet``)::

    <out>/README.md                                  dataset card (YAML configs + the columns)
    <out>/binary_labels/train-00000-of-00001.parquet one row per binary label (undone ones left out)
    <out>/pairs/train-00000-of-00001.parquet         one row per pair of a ranking, Pick-a-Pic layout

A table with no rows is left out (``datasets`` refuses an empty split); a round with no labels at
all is an error.

``binary_labels.image`` is stored in the layout of the ``datasets`` ``Image`` feature (a struct of
``bytes`` and ``path``) and declared as such in the Parquet schema metadata, so
``datasets.load_dataset("parquet", data_files=...)`` gives PIL images.  It also has RichHF-18K's
region columns (:mod:`data.marks`), per image: ``misalignment_map`` (the raters' averaged disk
heatmap at image size, a 0-255 grey Image) and ``prompt_misalignment_label`` (one 0/1 per word
of :func:`data.marks.prompt_words`, space-separated, 0 = misaligned), and each answer's own ``mark_points`` / ``mark_words``.  ``pairs`` follows
Pick-a-Pic v2: ``caption``, ``jpg_0`` / ``jpg_1`` (the encoded image bytes, plain binary as there,
so code written for Pick-a-Pic, e.g. PickScore's or Diffusion-DPO's loaders, reads them unchanged;
our images are PNG whatever the column is called), ``label_0`` / ``label_1`` (1/0, 0.5/0.5 for a
tie), ``are_different``, ``has_label``, ``best_image_uid``, ``image_0_uid`` / ``image_1_uid``,
``model_0`` / ``model_1``, ``ranking_id``, ``user_id``, ``num_example_per_prompt``,
``created_at``; our ids are strings where Pick-a-Pic's are integers, and there are no URL columns.

Every image goes through :func:`data.generations.image_bytes`, so a file that no longer matches its
row stops the export with an error naming it.  The folder is built under a hidden ``.tmp-`` name
and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core.errors import DataError, UserError
from data.generations import image_bytes
from data.labels import current
from data.marks import PROMPT_WORDS_RULE, current_marks, heatmap_u8, image_marks, prompt_words
from data.pairs import rankings_to_pairs
from data.hf_schemas import HF_BINARY_LABELS, HF_PAIRS
from data.schemas import BINARY_LABELS, GENERATIONS, RANKINGS
from data.store import Store

SHARD = "train-00000-of-00001.parquet"
ROWS_PER_GROUP = 64
"""Rows per Parquet row group: image rows are large, and the Hub's viewer reads a group at a time."""

# Arrow type names that differ from the `datasets` Value dtype names.
_DTYPES = {"float": "float32", "double": "float64", "halffloat": "float16"}


def _feature(t: pa.DataType) -> dict:
    """The ``datasets`` feature of an Arrow type: List of a list, a dict of a struct, else Value."""
    if pa.types.is_list(t):
        return {"feature": _feature(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {f.name: _feature(f.type) for f in t}
    return {"dtype": _DTYPES.get(str(t), str(t)), "_type": "Value"}


def _with_features(schema: pa.Schema, images: tuple[str, ...]) -> pa.Schema:
    """``schema`` with the ``huggingface`` metadata that ``datasets`` reads features from: the
    ``images`` columns as Image, the others by their Arrow type (:func:`_feature`)."""
    features = {f.name: {"_type": "Image"} if f.name in images else _feature(f.type) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def _png(gray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, schema: pa.Schema, batches: Iterator[list[dict]]) -> int:
    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=ROWS_PER_GROUP)
            rows += len(batch)
    return rows


def _chunks(records: list[dict], build: Callable[[dict], dict]) -> Iterator[list[dict]]:
    """``build`` applied to ``records`` a row group at a time (so at most one group of image bytes
    is held in memory)."""
    for start in range(0, len(records), ROWS_PER_GROUP):
        yield [build(r) for r in records[start:start + ROWS_PER_GROUP]]


def write_hf_dataset(store: Store, directory: str | os.PathLike) -> dict[str, int]:
    """Write the round's current labels with their images to ``directory`` (which must not exist)
    as a Hugging Face dataset folder; returns the rows per table."""
    directory = Path(directory)
    if directory.exists():
        raise UserError(f"{directory} already exists.", "export to a new folder.")
    gens = store.to_pandas(GENERATIONS).set_index("image_id", drop=False)
    binary = current(store, BINARY_LABELS.name).to_pandas()
    pairs = rankings_to_pairs(current(store, RANKINGS.name)).to_pandas()
    labelled = {"binary_labels": set(binary["image_id"]), "rankings": set(pairs["image_0"]) | set(pairs["image_1"])}
    for table, ids in labelled.items():
        missing = sorted(set(ids) - set(gens.index))
        if missing:
            raise DataError(f"{table} of {store.root} name images not in the generations table: {missing[:3]}.",
                            "export the dataset root the labels were given in.")

    def image(image_id: str) -> bytes:
        return image_bytes(store.root, gens.loc[image_id])

    marks = image_marks(store)
    own = {m["label_id"]: m for m in current_marks(store).to_pylist()}

    @lru_cache(maxsize=ROWS_PER_GROUP)
    def regions(image_id: str) -> tuple[dict, str]:
        """RichHF-18K's columns of an image: its heatmap as a PNG, its word labels."""
        g, m = gens.loc[image_id], marks.get(image_id)
        gray = heatmap_u8(m.points if m else [], (int(g["height"]), int(g["width"])))
        words = m.word_labels() if m else [1] * len(prompt_words(g["prompt"]))
        return ({"bytes": _png(gray), "path": f"{Path(g['image_path']).stem}-misalignment.png"},
                " ".join(map(str, words)))

    def binary_row(r: dict) -> dict:
        g = gens.loc[r["image_id"]]
        return dict(image={"bytes": image(r["image_id"]), "path": Path(g["image_path"]).name},
                    prompt=g["prompt"], label=r["label"], image_id=r["image_id"], prompt_id=r["prompt_id"],
                    model_id=g["model_id"], seed=int(g["seed"]), rater_id=r["rater_id"], label_id=r["label_id"],
                    skip_reason=r["skip_reason"], is_gold=bool(r["is_gold"]),
                    duration_ms=int(r["duration_ms"]), guideline_version=r["guideline_version"],
                    created_at=r["created_at"], **dict(zip(("misalignment_map", "prompt_misalignment_label"),
                                                           regions(r["image_id"]))),
                    mark_points=own[r["label_id"]]["points"] if r["label_id"] in own else [],
                    mark_words=own[r["label_id"]]["words"] if r["label_id"] in own else [])

    per_caption = Counter(gens.loc[i, "prompt"] for i in pairs["image_0"])

    def pair_row(r: dict) -> dict:
        g0, g1 = gens.loc[r["image_0"]], gens.loc[r["image_1"]]
        best = r["image_0"] if r["label_0"] > r["label_1"] else r["image_1"] if r["label_1"] > r["label_0"] else ""
        return dict(caption=g0["prompt"], jpg_0=image(r["image_0"]), jpg_1=image(r["image_1"]),
                    label_0=float(r["label_0"]), label_1=float(r["label_1"]),
                    are_different=g0["sha256"] != g1["sha256"], has_label=True, best_image_uid=best,
                    image_0_uid=r["image_0"], image_1_uid=r["image_1"], model_0=g0["model_id"],
                    model_1=g1["model_id"], ranking_id=r["ranking_id"], user_id=r["rater_id"],
                    num_example_per_prompt=per_caption[g0["prompt"]], prompt_id=r["prompt_id"],
                    created_at=r["created_at"])

    # `datasets` refuses a split with no rows, so a table with none (a round ranked but not
    # labelled good/bad, or the reverse) is left out, config and all.
    tables = {name: (schema, records, build) for name, schema, records, build in (
        ("binary_labels", _with_features(HF_BINARY_LABELS, ("image", "misalignment_map")), _records(binary),
         binary_row),
        ("pairs", _with_features(HF_PAIRS, ()), _records(pairs), pair_row)) if records}
    if not tables:
        raise UserError(f"no labels in {store.root} to export.",
                        "label the round first (make label, or make simulate-raters).")
    # A hidden folder: a glob over exports/ (DuckDB's, say) does not see a half-written export.
    tmp = directory.parent / f".tmp-{directory.name}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an export that died: never a finished one
    try:
        rows = {}
        for name, (schema, records, build) in tables.items():
            (tmp / name).mkdir(parents=True)
            rows[name] = _write(tmp / name / SHARD, schema, _chunks(records, build))
        (tmp / "README.md").write_text(dataset_card(store.root, rows, gens), encoding="utf-8")
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for missing values (pandas gives NaN/NaT)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def dataset_card(root: Path, rows: dict[str, int], gens: pd.DataFrame) -> str:
    """README.md of the export: YAML front matter naming the configs written (so the Hub and
    ``load_dataset(<folder>, "pairs")`` find them), then what the columns mean."""
    models = sorted(gens["model_id"].unique())
    configs = "".join(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/train-*.parquet\n"
                      for name in rows)
    return f"""---
configs:
{configs}task_categories:
- text-to-image
tags:
- human-feedback
- preference
- shapes-align
---

# Human feedback on text-to-image samples

Exported by shapes-align (`make label-export ARGS="format=hf"`) from the round `{root.name}`:
{rows.get("binary_labels", 0)} binary labels and {rows.get("pairs", 0)} preference pairs (a table with none is
left out), over {len(gens)} images of
{gens["prompt_id"].nunique()} prompts from {len(models)} model(s) ({", ".join(models[:5])}{", ..." if len(models) > 5 else ""}).
Labels a rater took back are left out.

```python
from datasets import load_dataset

binary = load_dataset("parquet", data_files="binary_labels/*.parquet")["train"]   # image: PIL image
pairs = load_dataset("parquet", data_files="pairs/*.parquet")["train"]            # jpg_0/jpg_1: bytes
```

## binary_labels

One row per answer to "does this image show what the prompt asks for?".

| column | meaning |
|---|---|
| `image` | the image (`datasets` Image feature: encoded bytes and file name) |
| `prompt` | the prompt the image was made for |
| `label` | `good`, `bad` or `skip` (the rater could not tell; `skip_reason` may say why) |
| `image_id`, `prompt_id`, `model_id`, `seed` | the image's row in the round's generations table |
| `rater_id`, `label_id`, `is_gold` | who answered; the answer's id; whether the image was a hidden gold item |
| `duration_ms`, `guideline_version`, `created_at` | time to answer; guidelines shown; when (UTC) |
| `misalignment_map` | where the image's raters marked it wrong (RichHF-18K): their clicks as disks, averaged over every rater who answered it good or bad, at image size, 0-255 grey; the same on each row of the image |
| `prompt_misalignment_label` | one `0`/`1` per prompt word, written separated by single spaces (RichHF-18K's layout), `0` when at least half of those raters marked the word wrong; the prompt's words are the prompt {PROMPT_WORDS_RULE}, so `"two  red\\tcircles"` has three (the words the raters saw, and what `mark_words` indexes) |
| `mark_points`, `mark_words` | this answer's own marks: points `{{x, y}}` as fractions of the image, word indices from 0 |

## pairs

Every pair of images of each ranking, in the layout of Pick-a-Pic v2 (so its loaders read it).

| column | meaning |
|---|---|
| `caption` | the prompt |
| `jpg_0`, `jpg_1` | the two images' encoded bytes (PNG here, whatever the name says) |
| `label_0`, `label_1` | 1 and 0 when image 0 was ranked better, 0 and 1 when worse, 0.5 and 0.5 for a tie |
| `best_image_uid` | the better image's id, empty for a tie |
| `image_0_uid`, `image_1_uid`, `model_0`, `model_1` | the images' ids and models |
| `are_different` | the two files differ; `has_label` is always true |
| `ranking_id`, `user_id`, `created_at` | the ranking the pair comes from, its rater, when (UTC) |
| `num_example_per_prompt` | pairs in this export with the same caption |
| `prompt_id` | the prompt's id in the round |
"""
