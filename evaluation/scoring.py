"""Scoring a generations table with a reward (``make score-rewards``): one ``rewards`` row per
image (see data/schemas.py REWARDS), the reward applied to a dataset's images as the evaluation
applies it to a pipeline's.

Images already scored by the same reward model (same ``model_id``, which hashes the weights) are
skipped, so an interrupted run resumes where it stopped and a second run writes nothing.  Rows are
appended per batch, durably.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow.compute as pc
from tqdm import tqdm

from core.errors import UserError
from data.generations import check_image, load_image
from data.schemas import GENERATIONS, REWARDS
from data.store import Store
from reward.reward_fn import LearnedReward


@dataclass(frozen=True)
class ScoreSummary:
    reward_model: str
    scored: int
    already_scored: int
    mean_reward: float | None


def score_generations(store: Store, model: LearnedReward, *, model_path: str = "",
                      progress: bool = False) -> ScoreSummary:
    """Score the images ``model`` has not scored yet, ``model.batch_size`` a batch."""
    gens = store.to_pandas(GENERATIONS)
    if gens.empty:
        raise UserError(f"no generated images in {store.root} (the generations table is empty).",
                        "run `make generate` first, or point root= at a dataset root.")
    if not model.model_id:
        raise UserError("this reward model has no model_id (it was never saved).",
                        "save it with save_pretrained and load it with from_pretrained.")
    done_tbl = store.read(REWARDS)
    done = set(pc.filter(done_tbl["image_id"], pc.equal(done_tbl["reward_model"], model.model_id)).to_pylist())
    todo = gens[~gens["image_id"].isin(done)]
    for _, r in todo.iterrows():  # every file against its row first, so a mismatch stores no score
        check_image(store.root, r)
    total, n = 0.0, 0
    bar = tqdm(total=len(todo), desc="scoring", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(todo), model.batch_size):
        chunk = todo.iloc[start:start + model.batch_size]
        images = [load_image(store.root, r) for _, r in chunk.iterrows()]
        rewards = model.score(images, chunk["prompt"].tolist()).cpu().tolist()
        now = datetime.now(timezone.utc)
        store.append(REWARDS, [dict(image_id=r.image_id, prompt_id=r.prompt_id,
                                    reward_model=model.model_id, reward=float(v),
                                    model_path=model_path, created_at=now)
                               for r, v in zip(chunk.itertuples(), rewards)])
        total += sum(rewards)
        n += len(rewards)
        bar.update(len(rewards))
    bar.close()
    return ScoreSummary(model.model_id, n, len(done & set(gens["image_id"])), total / n if n else None)
