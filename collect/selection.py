"""What to label next: which of a round's images go to the raters (issue 43, the closed loop).

``select(cfg)`` picks ``budget`` images of one round of a dataset root and appends one
``selections`` row per pick (data/schemas.py SELECTIONS); the labeling app serves those.  Methods
(:data:`data.schemas.SelectionMethod`):

- ``all``: every image of the round (the budget is not used);
- ``random``: ``budget`` images drawn uniformly, seeded;
- ``prompts``: whole prompts drawn at random, every image of each, until ``budget`` images (a
  label-scarce first round: the target rule needs several labelled images of a prompt to judge it);
- ``uncertain``: the ``budget`` images the reward model knows least about (active learning by
  uncertainty sampling, Lewis & Gale 1994).  With a reward that carries an epistemic spread
  (:mod:`reward.epistemic`: s, in calibrated-logit units) the uncertainty is the spread of
  P(good) it implies, p(1 - p) s (the delta method): what a label can still teach the reward, and
  not the noise no label removes.  A reward without one falls back to the margin,
  1 - 2 |p - 0.5| (1 on the decision boundary, 0 at p = 0 or 1), p the calibrated P(good);
- ``mix``: round(mix_share x budget) by uncertainty, the rest drawn at random from the others
  (uncertainty alone keeps asking about one region; the random share keeps the labels an
  unbiased sample for the reward's validation and calibration).

The uncertainty picks are kept diverse (BAL-PM, Melo et al. 2024: a batch ranked by uncertainty
alone is near-duplicates): a prompt gets at most ``prompt_cap`` times its even share of them
(the budget over the round's prompts, rounded up), the most uncertain first; if the caps leave
picks unmade, the most uncertain of the rest fill them.

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
from core.config import NonNegativeFloat, NonNegativeInt, PositiveInt, Share
from core.errors import UserError
from data.generations import check_image, load_image
from data.rounds import resolve_rounds, rounds_in
from data.schemas import GENERATIONS, SELECTIONS, SelectionMethod
from data.store import Store
from reward.reward_fn import LearnedReward


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
    prompt_cap: NonNegativeFloat = 2.0
    """uncertain and mix: a prompt gets at most this many times its even share of the uncertainty
    picks (their number over the round's prompts, rounded up); 0: no cap."""
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
    uncertainty_kind: Literal["epistemic", "margin"] | None  # which uncertainty (module docstring); None without a reward
    mean_uncertainty_selected: float | None  # None without a reward model
    mean_uncertainty_all: float | None
    image_ids: list[str]  # the picks, in the order chosen


def uncertainty(p: np.ndarray) -> np.ndarray:
    """1 - 2 |p - 0.5|: how near P(good) is to the decision boundary, in [0, 1]."""
    return 1.0 - 2.0 * np.abs(np.asarray(p, dtype=np.float64) - 0.5)


def epistemic_uncertainty(p: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """p (1 - p) s: the spread of P(good) = sigmoid(z) from a spread s of its logit z (delta method)."""
    p = np.asarray(p, dtype=np.float64)
    return p * (1.0 - p) * np.asarray(spread, dtype=np.float64)


def capped(ranked: np.ndarray, groups: np.ndarray, k: int, cap: float) -> np.ndarray:
    """The first ``k`` of ``ranked`` (indices, best first) taking at most ceil(cap x k / the number
    of groups) from any one group (``groups``: (n,) a group id per index); picks the caps leave
    unmade are filled by the best of the rest.  ``cap`` 0: no cap."""
    if cap <= 0 or k == 0:
        return ranked[:k]
    most = int(np.ceil(cap * k / len(np.unique(groups))))
    taken: dict = {}
    first = []
    for i in ranked:
        g = groups[i]
        if taken.get(g, 0) < most:
            taken[g] = taken.get(g, 0) + 1
            first.append(i)
            if len(first) == k:
                break
    rest = ranked[~np.isin(ranked, first)]
    return np.concatenate([np.asarray(first, np.int64), rest[:k - len(first)]]).astype(np.int64)


def whole_prompts(groups: np.ndarray, budget: int, order: np.ndarray) -> np.ndarray:
    """Every image of whole prompts, the prompts in the order their first image takes in ``order``
    (a seeded permutation), until ``budget`` images (the last prompt cut to fit)."""
    seen = list(dict.fromkeys(groups[order]))
    by_group = {g: np.flatnonzero(groups == g) for g in seen}
    return np.concatenate([by_group[g] for g in seen]).astype(np.int64)[:budget]


def choose(u: np.ndarray | None, budget: int, method: SelectionMethod, mix_share: float,
           order: np.ndarray, groups: np.ndarray | None = None, prompt_cap: float = 0.0) -> tuple[np.ndarray, int]:
    """Indices of the picks and how many were picked by uncertainty.  ``u``: (n,) uncertainties
    (None: no reward); ``order``: a seeded permutation of range(n), which breaks ties in ``u`` and
    orders the random draws; ``groups``: (n,) each image's prompt (for ``prompts`` and the cap)."""
    n = len(order)
    if method == "all":
        return np.arange(n), 0
    if method == "prompts":
        return whole_prompts(groups, budget, order), 0
    k_u = {"random": 0, "uncertain": budget, "mix": int(np.floor(mix_share * budget + 0.5))}[method]
    # most uncertain first; equal uncertainty in the seeded order (stable sort of the permutation)
    by_u = order[np.argsort(-u[order], kind="stable")] if k_u else np.zeros(0, np.int64)
    first = capped(by_u, groups, k_u, prompt_cap) if groups is not None else by_u[:k_u]
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
    reward = None
    if cfg.reward is not None and cfg.method not in ("all", "prompts"):
        reward = LearnedReward.load(cfg.reward, None if cfg.device == "auto" else cfg.device, batch_size=cfg.batch_size)
    kind = None if reward is None else ("epistemic" if reward.has_spread else "margin")
    u = None if reward is None else _uncertainties(reward, store.root, gens, cfg)
    order = seeds.rng(cfg.seed, seeds.Stream.SELECTION, cfg.round).permutation(n)
    groups = gens["prompt_id"].to_numpy()
    picks, k_u = choose(u, cfg.budget, cfg.method, cfg.mix_share, order, groups, cfg.prompt_cap)

    now = datetime.now(timezone.utc)
    ids = gens["image_id"].to_numpy()
    # the uncertainty of the picks made by it (the first k_u); null for the random ones, as the
    # schema says, so a mix's random share stays tellable (make reward-check judges on it)
    store.append(SELECTIONS, [dict(image_id=str(ids[i]), round=cfg.round, method=cfg.method,
                                   uncertainty=None if u is None or j >= k_u else float(u[i]),
                                   reward_model=None if reward is None else reward.model_id, created_at=now)
                              for j, i in enumerate(picks)])
    return SelectResult(
        root=str(cfg.root), round=cfg.round, method=cfg.method, images=n, selected=len(picks),
        by_uncertainty=k_u, at_random=len(picks) - k_u if cfg.method != "all" else 0,
        reward_model=None if reward is None else reward.model_id, uncertainty_kind=kind,
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


def _uncertainties(reward: LearnedReward, root: Path, gens, cfg: SelectConfig) -> np.ndarray:
    """(n,) each image's uncertainty with its own prompt (the module docstring): epistemic when
    the reward has a spread, else the margin of its calibrated P(good)."""
    p, s = np.empty(len(gens)), np.empty(len(gens))
    for start in tqdm(range(0, len(gens), cfg.batch_size), desc="uncertainty", unit="batch",
                      disable=not cfg.progress, file=sys.stderr):
        chunk = gens.iloc[start:start + cfg.batch_size]
        images = [load_image(root, r) for _, r in chunk.iterrows()]
        prompts = chunk["prompt"].tolist()
        at = slice(start, start + len(chunk))
        p[at] = reward.score(images, prompts).cpu().numpy()
        if reward.has_spread:
            s[at] = reward.spread(images, prompts).cpu().numpy()
    return epistemic_uncertainty(p, s) if reward.has_spread else uncertainty(p)
