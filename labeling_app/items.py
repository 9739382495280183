"""The items of a labeling round: what :class:`~labeling_app.assignment.Assigner` hands out.

A *binary* item is one image of the generations table; a *ranking* item is a set of
2..``rank_max_images`` images of one prompt.  :func:`build_items` lists a round's items in serving
order (one fixed shuffle); an :class:`Assignment` is an item shown to a rater, with the opaque
token that an answer to it must quote.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import seeds
from labeling_app.config import TASKS


@dataclass(frozen=True)
class Item:
    task: str                      # binary | ranking
    item_id: str                   # binary: the image_id; ranking: "r-" + hash of its image ids
    prompt_id: str
    prompt: str
    image_ids: tuple[str, ...]     # one for binary, 2..rank_max_images for ranking
    is_gold: bool = False


@dataclass(frozen=True)
class Assignment:
    item: Item
    token: str                     # opaque; a submission must quote it
    shown_at: float                # time.time() when first shown (duration_ms is measured from it)


def ranking_item_id(image_ids) -> str:
    return "r-" + hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


def build_items(gens: pd.DataFrame, tasks: tuple[str, ...], rank_max_images: int, gold: dict[str, str],
                seed: int) -> dict[str, list[Item]]:
    """The round's items per task, in serving order (a fixed shuffle of ``seed``)."""
    out: dict[str, list[Item]] = {t: [] for t in TASKS}
    if gens.empty:
        return out
    # prompt_id and seed, not the random image_id, break ties, so the same round is served in the
    # same order every time (a rerun of the demo gives the same labels).
    gens = gens.sort_values(["created_at", "prompt_id", "seed", "image_id"], kind="stable")
    if "binary" in tasks:
        out["binary"] = [Item("binary", r.image_id, r.prompt_id, r.prompt, (r.image_id,))
                         for r in gens.itertuples() if r.image_id not in gold]
    if "ranking" in tasks:
        for prompt_id, group in gens.groupby("prompt_id", sort=True):
            ids = group["image_id"].tolist()
            if len(ids) < 2:
                continue
            # Balanced chunks (5 images at most 4 per set: 3 + 2), so no set has a single image.
            n_chunks = -(-len(ids) // rank_max_images)
            for chunk in np.array_split(np.array(ids, dtype=object), n_chunks):
                chunk = tuple(chunk.tolist())
                out["ranking"].append(Item("ranking", ranking_item_id(chunk), prompt_id,
                                           group["prompt"].iloc[0], chunk))
    for task, stream in zip(TASKS, (seeds.Stream.BINARY_ORDER, seeds.Stream.RANKING_ORDER), strict=True):
        order = seeds.rng(seed, stream).permutation(len(out[task]))
        out[task] = [out[task][j] for j in order]
    return out
