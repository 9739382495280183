"""What to label next: which of a round's images go to the raters (issue 43, the closed loop).

``select(cfg)`` picks ``budget`` images of one round of a dataset root and appends one
``selections`` row per pick (data/schemas.py SELECTIONS); the labeling app serves those.  Methods
(:data:`data.schemas.SelectionMethod`):

- ``all``: every image of the round (the budget is not used);
- ``random``: ``budget`` images drawn uniformly, seeded;
- ``uncertain``: the ``budget`` images the reward model is least sure of (active learning by
  uncertainty sampling, Lewis & Gale 1994): uncertainty = 1 - 2 |p - 0.5| with p the reward's
  calibrated P(a rater says good) (:meth:`reward.model.RewardModel.score`, Platt-scaled, so 0.5 is
  the decision boundary): 1 on the boundary, 0 at p = 0 or 1;
- ``mix``: round(mix_share x budget) by uncertainty, the rest drawn at random from the others
  (uncertainty alone keeps asking about one region; the random share keeps the labels an
  unbiased sample for the reward's validation and calibration).

Why the distance to the boundary and not the disagreement of an ensemble of heads: a reward folder
holds one head, and an ensemble would mean training several per round in ``make reward``; the
margin needs only the model the loop already has, one scoring pass, and on a Platt-calibrated
probability it is the standard, well-behaved choice.

Deterministic given the seed: ties in uncertainty and the random picks follow one seeded
permutation of the round's images (ordered by image id first), so a re-run picks the same images.
Every refusal (budget over the round's images, a round with no images, a round already selected,
no reward model for uncertain/mix) happens before anything is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from core import seeds
from core.config import NonNegativeInt, PositiveInt, Share
from core.errors import UserError
from data.generations import check_image, load_image
from data.rounds import resolve_rounds, rounds_in
from data.schemas import GENERATIONS, SELECTIONS, SelectionMethod
from data.store import Store
from reward.model import RewardModel


@dataclass(frozen=True)
class SelectConfig:
    root: str = "datasets/shapes"
    """Dataset root whose round is selected from; the picks go to its ``selections`` table."""
    round: NonNegativeInt = 0
    budget: PositiveInt = 64
    """Images to send to raters (not used by method=all)."""
    method: SelectionMethod = "uncertain"
    reward: str | None = "runs/reward"
    """A trained reward model folder (make reward); needed by uncertain and mix; with random it
    only reports the uncertainty of the picks; null: none."""
    mix_share: Share = 0.5
    """mix: the share of the budget picked by uncertainty (the rest at random)."""
    seed: int = 0
    batch_size: PositiveInt = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


@dataclass
class SelectResult:
    root: str
    round: int
    method: str
    images: int  # the round's images
    selected: int
    by_uncertainty: int  # picks made by uncertainty (uncertain: all; mix: the share; else 0)
    at_random: int  # picks drawn at random
    reward_model: str | None  # RewardModel.model_id that judged the images, None without one
    mean_uncertainty_selected: float | None  # None without a reward model
    mean_uncertainty_all: float | None
    image_ids: list[str]  # the picks, in the order chosen


def uncertainty(p: np.ndarray) -> np.ndarray:
    """1 - 2 |p - 0.5|: how near P(good) is to the decision boundary, in [0, 1]."""
    return 1.0 - 2.0 * np.abs(np.asarray(p, dtype=np.float64) - 0.5)


def choose(u: np.ndarray | None, budget: int, method: SelectionMethod, mix_share: float,
           order: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices of the picks and how many were picked by uncertainty.  ``u``: (n,) uncertainties
    (None: no reward); ``order``: a seeded permutation of range(n), which breaks ties in ``u`` and
    orders the random draws."""
    n = len(order)
    if method == "all":
        return np.arange(n), 0
    k_u = {"random": 0, "uncertain": budget, "mix": int(np.floor(mix_share * budget + 0.5))}[method]
    # most uncertain first; equal uncertainty in the seeded order (stable sort of the permutation)
    by_u = order[np.argsort(-u[order], kind="stable")] if k_u else np.zeros(0, np.int64)
    first = by_u[:k_u]
    rest = order[~np.isin(order, first)]
    return np.concatenate([first, rest[:budget - k_u]]).astype(np.int64), k_u


def select(cfg: SelectConfig) -> SelectResult:
    """Pick the round's images for the raters and append their ``selections`` rows (see the
    module docstring)."""
    if cfg.method in ("uncertain", "mix") and cfg.reward is None:
        raise UserError(f"method={cfg.method} ranks images by the reward model's uncertainty, but reward is null.",
                        "pass reward=<a reward model folder, e.g. runs/reward (make reward)>, or method=random.")
    store = Store(cfg.root)
    gens = _round_images(store, cfg)
    n = len(gens)
    if cfg.method != "all" and cfg.budget > n:
        raise UserError(f"budget={cfg.budget} is more than the {n} images of round {cfg.round} in {cfg.root}.",
                        f"set budget to at most {n}, or method=all to send every image.")
    done = store.to_pandas(SELECTIONS)
    done = done[done["round"] == cfg.round]
    if len(done):
        raise UserError(f"round {cfg.round} of {cfg.root} already has {len(done)} selected image(s) "
                        f"(method {sorted(set(done['method']))[0]}).",
                        f"to redo it, delete the folder {store.table_dir(SELECTIONS)} (it holds every round's "
                        "picks; re-select the earlier rounds too), then run make select again.")
    for _, row in gens.iterrows():  # every file against its row before any scoring or writing
        check_image(store.root, row)
    model = None
    if cfg.reward is not None and cfg.method != "all":
        model = RewardModel.from_pretrained(cfg.reward, device=None if cfg.device == "auto" else cfg.device)
    u = None if model is None else uncertainty(_probabilities(model, store.root, gens, cfg))
    order = seeds.rng(cfg.seed, seeds.Stream.SELECTION, cfg.round).permutation(n)
    picks, k_u = choose(u, cfg.budget, cfg.method, cfg.mix_share, order)

    now = datetime.now(timezone.utc)
    ids = gens["image_id"].to_numpy()
    store.append(SELECTIONS, [dict(image_id=str(ids[i]), round=cfg.round, method=cfg.method,
                                   uncertainty=None if u is None else float(u[i]),
                                   reward_model=None if model is None else model.model_id, created_at=now)
                              for i in picks])
    return SelectResult(
        root=str(cfg.root), round=cfg.round, method=cfg.method, images=n, selected=len(picks),
        by_uncertainty=k_u, at_random=len(picks) - k_u if cfg.method != "all" else 0,
        reward_model=None if model is None else model.model_id,
        mean_uncertainty_selected=None if u is None else round(float(u[picks].mean()), 4),
        mean_uncertainty_all=None if u is None else round(float(u.mean()), 4),
        image_ids=[str(ids[i]) for i in picks])


def _round_images(store: Store, cfg: SelectConfig):
    """The round's generations rows, ordered by image id (so the seeded order does not depend on
    how the table's parts were written)."""
    if not (Path(cfg.root) / GENERATIONS.name).is_dir():
        raise UserError(f"{cfg.root} has no generations table.", "point root= at a dataset root (make generate).")
    gens = store.to_pandas(GENERATIONS)
    resolve_rounds(str(cfg.round), rounds_in(store, gens))  # the one clear error for a round with no images
    return gens[gens["round"] == cfg.round].sort_values("image_id", kind="stable").reset_index(drop=True)


def _probabilities(model: RewardModel, root: Path, gens, cfg: SelectConfig) -> np.ndarray:
    """(n,) the reward's calibrated P(good) of each image with its own prompt."""
    out = np.empty(len(gens))
    for start in tqdm(range(0, len(gens), cfg.batch_size), desc="uncertainty", unit="batch",
                      disable=not cfg.progress, file=sys.stderr):
        chunk = gens.iloc[start:start + cfg.batch_size]
        images = [load_image(root, r) for _, r in chunk.iterrows()]
        out[start:start + len(chunk)] = model.score(images, chunk["prompt"].tolist()).cpu().numpy()
    return out
