"""The derived *pairs* table: every ranking as Pick-a-Pic-style preference pairs."""

from __future__ import annotations

import itertools

import pyarrow as pa

from data.conform import conform
from data.schemas import PAIRS, RANKINGS


def rankings_to_pairs(rankings: pa.Table) -> pa.Table:
    """One row per unordered pair of images of each ranking (i < j in the ranking's order).

    ``label_0`` is 1 when image_0 ranks better (smaller rank), 0 when worse, and 0.5/0.5 for a
    tie, as PickScore trains on; a ranking of n images gives n(n-1)/2 pairs.
    """
    rankings = conform(RANKINGS, rankings, "rankings")
    cols = {f.name: [] for f in PAIRS.schema}
    for r in rankings.to_pylist():
        for (i0, r0), (i1, r1) in itertools.combinations(zip(r["image_ids"], r["ranks"]), 2):
            l0 = 0.5 if r0 == r1 else float(r0 < r1)
            for k, v in (("ranking_id", r["ranking_id"]), ("prompt_id", r["prompt_id"]),
                         ("rater_id", r["rater_id"]), ("image_0", i0), ("image_1", i1),
                         ("label_0", l0), ("label_1", 1.0 - l0), ("created_at", r["created_at"])):
                cols[k].append(v)
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in PAIRS.schema},
                    schema=PAIRS.schema)
