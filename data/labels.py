"""Labels as they stand now: the label tables minus the rows raters took back (undo)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import DataError, UserError
from data.schemas import RETRACTABLE, RETRACTIONS, get_spec
from data.store import Store


def retract(store: Store, table: str, row_id: str, rater_id: str) -> None:
    """Take back one row of ``binary_labels`` or ``rankings`` (durable on return)."""
    store.append(RETRACTIONS, [dict(
        retraction_id=uuid.uuid4().hex, target_table=table, target_id=row_id, rater_id=rater_id,
        created_at=datetime.now(timezone.utc))])


def retracted_ids(store: Store, table: str) -> set[str]:
    r = store.read(RETRACTIONS)
    return set(pc.filter(r["target_id"], pc.equal(r["target_table"], table)).to_pylist())


def current(store: Store, table: str) -> pa.Table:
    """Every row of a label table that has not been retracted (the input of reward training)."""
    spec = get_spec(table)
    rows = store.read(spec)
    if spec.name not in RETRACTABLE:
        return rows
    gone = retracted_ids(store, spec.name)
    if not gone:
        return rows
    key = spec.key[0]
    return rows.filter(pc.invert(pc.is_in(rows[key], value_set=pa.array(sorted(gone)))))


def aggregate_binary(labels: pd.DataFrame, how: Literal["majority", "mean"] = "majority") -> pd.DataFrame:
    """Per image (sorted by id): good and bad votes (skips dropped) and the target.  *majority* =
    1 if more raters said good than bad, 0 if fewer, the image dropped on a tie; *mean* = the share
    of raters who said good.  ``labels``: binary label rows with ``image_id`` and ``label``."""
    votes = labels[labels["label"] != "skip"]
    if votes.empty:
        return pd.DataFrame(columns=["image_id", "good", "bad", "target"])
    g = votes.assign(good=votes["label"] == "good", bad=votes["label"] == "bad") \
        .groupby("image_id", sort=True)[["good", "bad"]].sum().reset_index()
    if how == "majority":
        g = g[g["good"] != g["bad"]].copy()
        g["target"] = (g["good"] > g["bad"]).astype(np.float32)
    elif how == "mean":
        g["target"] = (g["good"] / (g["good"] + g["bad"])).astype(np.float32)
    else:
        raise UserError(f"unknown binary aggregation '{how}'.", "use majority or mean.")
    return g


def check_label_images(root, gens: pd.DataFrame, binary: pd.DataFrame, rankings: pd.DataFrame | None) -> None:
    """Labels must point at images of the generations table, under the same prompt: a binary label
    naming an unknown image or another prompt than its image's, a ranking naming an unknown image
    or images of another prompt (a pair across prompts) is one DataError.  ``gens``: the
    generations table of ``root`` indexed by image_id; ``rankings``: None or empty when there are
    none.  The reward stage and fine-tuning on the labels (DPO, KTO) check the same way."""
    unknown = sorted(set(binary["image_id"]) - set(gens.index))
    if unknown:
        raise DataError(f"{len(unknown)} binary label(s) name images that are not in the generations "
                        f"table of {root} (e.g. {unknown[0]}).",
                        "label images of this dataset root only, or restore its generations table.")
    if len(binary):
        wrong = binary["prompt_id"].to_numpy() != gens.loc[binary["image_id"], "prompt_id"].to_numpy()
        if wrong.any():
            row = binary.iloc[int(np.argmax(wrong))]
            raise DataError(f"the binary label of image {row.image_id} says prompt '{row.prompt_id}', "
                            f"the generations table says '{gens.loc[row.image_id, 'prompt_id']}'.",
                            "fix the labels' prompt_id, or relabel the image.")
    for r in ([] if rankings is None else rankings.itertuples()):
        missing = [i for i in r.image_ids if i not in gens.index]
        if missing:
            raise DataError(f"ranking {r.ranking_id} names images that are not in the generations "
                            f"table of {root} (e.g. {missing[0]}).",
                            "rank images of this dataset root only, or restore its generations table.")
        other = set(gens.loc[list(r.image_ids), "prompt_id"]) - {r.prompt_id}
        if other:
            raise DataError(f"ranking {r.ranking_id} is for prompt '{r.prompt_id}' but includes "
                            f"images of {sorted(other)}.", "rank images of one prompt together.")
