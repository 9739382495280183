"""The Hugging Face export's tables (``make label-export format=hf``, labeling_app/hf_export.py):
written for other tools to read (``datasets``, Pick-a-Pic and RichHF layouts), never read back by the
store, so plain Arrow schemas rather than :class:`data.schemas.TableSpec`."""

from __future__ import annotations

import pyarrow as pa

from data.schemas import TIMESTAMP

HF_IMAGE = pa.struct({"bytes": pa.binary(), "path": pa.string()})
"""The Arrow storage of the ``datasets`` Image feature."""

HF_BINARY_LABELS = pa.schema([
    ("image", HF_IMAGE),
    ("prompt", pa.string()),
    ("label", pa.string()),                 # good | bad | skip
    ("image_id", pa.string()),
    ("prompt_id", pa.string()),
    ("model_id", pa.string()),
    ("seed", pa.int64()),
    ("rater_id", pa.string()),
    ("label_id", pa.string()),
    ("skip_reason", pa.string()),
    ("is_gold", pa.bool_()),
    ("duration_ms", pa.int64()),
    ("guideline_version", pa.string()),
    ("created_at", TIMESTAMP),
    # RichHF-18K's columns, per image: averaged heatmap (0-255 grey PNG), "1 0 1" per prompt word
    # (0: misaligned); then this answer's own marks (data.marks)
    ("misalignment_map", HF_IMAGE),
    ("prompt_misalignment_label", pa.string()),
    ("mark_points", pa.list_(pa.struct([("x", pa.float32()), ("y", pa.float32())]))),
    ("mark_words", pa.list_(pa.int32())),
])

HF_PAIRS = pa.schema([
    ("caption", pa.string()),
    ("jpg_0", pa.binary()),
    ("jpg_1", pa.binary()),
    ("label_0", pa.float64()),
    ("label_1", pa.float64()),
    ("are_different", pa.bool_()),
    ("has_label", pa.bool_()),
    ("best_image_uid", pa.string()),        # "" for a tie, as in Pick-a-Pic
    ("image_0_uid", pa.string()),
    ("image_1_uid", pa.string()),
    ("model_0", pa.string()),
    ("model_1", pa.string()),
    ("ranking_id", pa.string()),
    ("user_id", pa.string()),               # the rater
    ("num_example_per_prompt", pa.int64()),  # pairs in this export with the same caption
    ("prompt_id", pa.string()),
    ("created_at", TIMESTAMP),
])
