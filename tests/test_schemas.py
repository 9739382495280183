from datetime import datetime, timezone

import pyarrow as pa
import pytest

from core.errors import DataError
from data.conform import conform, from_rows
from data.schemas import SCHEMA_VERSION, BINARY_LABELS, GENERATIONS, PAIRS, RANKINGS, TABLES, get_spec, validate_ranks

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def generation_row(**kw):
    row = dict(image_id="i1", prompt_id="p1", prompt="one red circle", category="color",
               model_id="m", seed=3, sampler="DDIMScheduler", num_inference_steps=20,
               guidance_scale=3.0, eta=1.0, height=64, width=64, image_path="images/i1.png",
               sha256="ab" * 32, created_at=NOW, round=0, model_fingerprint=None, run=None)
    row.update(kw)
    return row


def label_row(**kw):
    row = dict(label_id="l1", image_id="i1", prompt_id="p1", rater_id="r1", label="good",
               skip_reason=None, created_at=NOW, duration_ms=1200, is_gold=False,
               guideline_version="v1")
    row.update(kw)
    return row


def ranking_row(**kw):
    row = dict(ranking_id="k1", prompt_id="p1", rater_id="r1", image_ids=["a", "b", "c"],
               ranks=[1, 1, 2], created_at=NOW, duration_ms=5000, guideline_version="v1")
    row.update(kw)
    return row


def pair_row(**kw):
    row = dict(ranking_id="k1", prompt_id="p1", rater_id="r1", image_0="a", image_1="b",
               label_0=0.5, label_1=0.5, created_at=NOW)
    row.update(kw)
    return row


def retraction_row(**kw):
    row = dict(retraction_id="x1", target_table="binary_labels", target_id="l1", rater_id="r1",
               created_at=NOW)
    row.update(kw)
    return row


def reward_row(**kw):
    row = dict(image_id="i1", prompt_id="p1", reward_model="reward-0123456789", reward=0.75,
               model_path="runs/reward", created_at=NOW)
    row.update(kw)
    return row


ROWS = {"generations": generation_row, "binary_labels": label_row, "rankings": ranking_row,
        "pairs": pair_row, "retractions": retraction_row, "rewards": reward_row}


def gold_row(**kw):  # labeling app: hidden items with a known answer
    row = dict(image_id="i1", prompt_id="p1", answer="bad", source="oracle", created_at=NOW,
               points=[{"x": 0.5, "y": 0.25}], words=[1])
    row.update(kw)
    return row


ROWS["gold"] = gold_row


def import_row(**kw):  # make import: where an imported image came from
    row = dict(image_id="i1", source="/data/src/metadata.jsonl", source_row=1, file_name="a.png",
               extra='{"score": 0.5}', created_at=NOW)
    row.update(kw)
    return row


ROWS["imports"] = import_row


def marks_row(**kw):  # labeling app: where a bad answer says the image is wrong
    row = dict(label_id="l1", image_id="i1", prompt_id="p1", rater_id="r1", points=[dict(x=0.25, y=0.5)],
               words=[1], note=None, created_at=NOW)
    row.update(kw)
    return row


ROWS["marks"] = marks_row


def selection_row(**kw):  # the closed loop: which of a round's images go to raters
    row = dict(image_id="i1", round=1, method="uncertain", uncertainty=0.25, reward_model="reward-0123",
               created_at=NOW)
    row.update(kw)
    return row


ROWS["selections"] = selection_row


def test_gold_answers_are_good_or_bad():
    from data.schemas import GOLD

    with pytest.raises(DataError, match="gold answers"):
        from_rows(GOLD, [gold_row(answer="skip")])


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_has_version_metadata_and_round_trips(name, tmp_path):
    spec = get_spec(name)
    assert spec.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    table = from_rows(spec, [ROWS[name]()])
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "t.parquet")
    back = conform(spec, pq.read_table(tmp_path / "t.parquet"), "t")
    assert back.equals(table)
    assert back.to_pylist() == [ROWS[name]()]


def test_pandas_written_file_with_wider_types_conforms():
    import pandas as pd

    df = pd.DataFrame([label_row()])  # pandas gives int64 / ns timestamps / object strings
    table = conform(BINARY_LABELS, pa.Table.from_pandas(df, preserve_index=False), "df")
    assert table.schema.equals(BINARY_LABELS.schema)


def test_missing_column_is_named():
    table = from_rows(BINARY_LABELS, [label_row()]).drop_columns(["rater_id"])
    with pytest.raises(DataError, match=r"f.parquet.*missing column 'rater_id'"):
        conform(BINARY_LABELS, table, "f.parquet")


def test_wrong_type_is_named():
    table = from_rows(BINARY_LABELS, [label_row()])
    table = table.set_column(table.schema.get_field_index("is_gold"), "is_gold",
                             pa.array(["yes"]))
    with pytest.raises(DataError, match=r"column 'is_gold'.*type string, expected bool"):
        conform(BINARY_LABELS, table, "f.parquet")


def test_newer_schema_version_is_refused():
    table = from_rows(GENERATIONS, [generation_row()])
    table = table.replace_schema_metadata({"schema_version": "99"})
    with pytest.raises(DataError, match="schema_version 99"):
        conform(GENERATIONS, table, "f.parquet")


@pytest.mark.parametrize("bad, message", [
    (dict(label="maybe"), "not one of"),
    (dict(rater_id=""), "empty string"),
    (dict(duration_ms=-5), "negative"),
    (dict(image_id=None), "null"),
])
def test_label_values_are_checked(bad, message):
    with pytest.raises(DataError, match=message):
        from_rows(BINARY_LABELS, [label_row(**bad)])


def test_nan_guidance_is_refused():
    with pytest.raises(DataError, match="NaN"):
        from_rows(GENERATIONS, [generation_row(guidance_scale=float("nan"))])


@pytest.mark.parametrize("ranks, n", [([1, 2, 3], 3), ([1, 1, 2], 3), ([2, 1], 2), ([1, 1], 2)])
def test_valid_rankings(ranks, n):
    assert validate_ranks(ranks, n) == ranks


@pytest.mark.parametrize("ranks, n, message", [
    ([1, 1, 3], 3, "not an ordering"),
    ([2, 3], 2, "not an ordering"),
    ([0, 1], 2, "not an ordering"),
    ([1, 2], 3, "2 ranks for 3 images"),
    ([1], 1, "at least 2 images"),
])
def test_invalid_rankings(ranks, n, message):
    with pytest.raises(DataError, match=message):
        validate_ranks(ranks, n)


def test_ranking_rows_are_checked():
    with pytest.raises(DataError, match="not an ordering"):
        from_rows(RANKINGS, [ranking_row(ranks=[1, 3, 3])])
    with pytest.raises(DataError, match="twice"):
        from_rows(RANKINGS, [ranking_row(image_ids=["a", "a", "b"])])


def test_pair_labels_sum_to_one():
    with pytest.raises(DataError, match="label_0 \\+ label_1"):
        from_rows(PAIRS, [pair_row(label_0=1.0, label_1=1.0)])


def test_unknown_table():
    with pytest.raises(DataError, match="unknown table 'labels'"):
        get_spec("labels")


def test_json_safe_writes_strict_json():
    import json
    import math

    import numpy as np

    from core.jsonable import json_safe

    x = {"a": float("nan"), "b": [np.float32(0.123456), np.int64(3)], "c": (1.0, "s", None)}
    assert json_safe(x) == {"a": None, "b": [float(np.float32(0.123456)), 3], "c": [1.0, "s", None]}
    assert json_safe(x, digits=2)["b"] == [0.12, 3]
    json.loads(json.dumps(json_safe({"m": math.nan}), allow_nan=False))


def test_docs_data_lists_every_table_once():
    """Issue 74: docs/data.md listed `marks` twice (with different columns)."""
    from pathlib import Path

    import data  # noqa: F401 - registers every table (marks, gold, imports)

    page = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    lines = page.split("## The tables", 1)[1].strip().splitlines()
    assert lines[0].startswith("| table |")
    listed = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        listed.append(line.split("|")[1].strip().strip("`"))
    assert sorted(listed) == sorted(set(listed)), f"listed more than once: {listed}"
    assert set(listed) == set(TABLES)
