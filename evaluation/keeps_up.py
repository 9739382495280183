"""Does a trained reward keep up with a newer round?  The reward judged on the raters' labels of a
round it never trained on, against its own validation figures: ``make reward-check``, the
label-based twin of the loop report's oracle check (``reward_keeps_up``), for data with no oracle.

Why: labelling in rounds pays when the policy moves where the reward was not trained
(docs/loop.md).  If the reward the policy was fine-tuned against agrees with the fine-tuned
model's newly labelled images about as well as with its own validation images, the policy has not
left what the reward knows, and the same labels spent at once on base-model images would have done
as well; if it falls behind, the new labels teach the reward what it got wrong.

Figures on the round's images with a decided majority label (skips and ties out), the reward's
calibrated P(good) as the score: ``binary_auc`` with its standard error (Hanley & McNeil 1982),
``binary_accuracy`` at 1/2, and ``pairwise_accuracy_vs_labels`` on the round's ranking pairs (ties
out).  The reference is the same reward's figures on its own ``val_images`` (its metrics.json).
The reward *keeps up* when the round's AUC is at most ``tolerance`` below the reference's.

Images picked by uncertainty (``make select method=uncertain``, or ``mix``'s uncertainty share)
are the ones the reward was least sure of, so its figures on them are lower by construction: the
figures use the round's random picks alone (``method=random``, or ``mix``'s random share) when
there are at least ``min_images`` of them, and otherwise every labelled image with
``biased_sample`` true (read the verdict as a lower bound then).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from core.config import NonNegativeInt, PositiveInt, Share
from core.errors import UserError
from data.generations import load_image
from data.labels import aggregate_binary
from data.pairs import rankings_to_pairs
from data.read import read_table
from data.rounds import resolve_rounds, rounds_in
from data.store import Store
from reward.metrics import pair_accuracy
from reward.reward_fn import LearnedReward

REFERENCE_KEYS = ("binary_auc", "binary_accuracy", "pairwise_accuracy_vs_labels", "val_binary_images")


@dataclass(frozen=True)
class KeepsUpConfig:
    reward: str = "runs/reward"  # the reward folder the policy was fine-tuned against
    root: str = "datasets/shapes"  # the dataset root holding the newer round and its labels
    round: NonNegativeInt | None = None  # the round to judge it on; null: the newest
    tolerance: Share = 0.03  # the round's AUC may fall this far below the reference's
    min_images: PositiveInt = 20  # random picks needed to judge on them alone
    batch_size: PositiveInt = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class KeepsUpResult:
    reward_model: str  # RewardModel.model_id
    root: str
    round: int
    sample: Literal["random picks", "all labelled"]  # which of the round's labelled images
    biased_sample: bool  # judged on images picked by uncertainty (the figures are a lower bound)
    labelled_images: int  # images with a decided majority label
    binary_auc: float
    binary_auc_se: float
    binary_accuracy: float
    pairwise_accuracy_vs_labels: float
    label_pairs: int  # ranking pairs the raters did not tie
    reference: dict  # the reward's val_images figures (REFERENCE_KEYS), from its metrics.json
    keeps_up: bool | None  # None: no AUC on one side (fewer than two classes)


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982, eq. 2): the standard error of an ROC AUC from n_pos positives and
    n_neg negatives (NaN without both)."""
    if n_pos < 1 or n_neg < 1 or not math.isfinite(auc):
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else math.nan


def _reference(reward: Path, root: Path, k: int) -> dict:
    """The reward's own val_images figures; an error when it trained on round ``k`` of ``root``."""
    path = reward / "metrics.json"
    if not path.is_file():
        raise UserError(f"{reward} has no metrics.json, so there is no validation figure to compare with.",
                        "pass reward=<a folder written by make reward>.")
    metrics = json.loads(path.read_text())
    data = metrics.get("data", {})
    same_root = data.get("root") is not None and Path(data["root"]).resolve() == root.resolve()
    if same_root and k in data.get("labelled_rounds", []):
        raise UserError(f"the reward {reward} trained on round {k}'s labels of {root}, so they cannot judge it.",
                        "pass the reward trained before that round (the one the round's model was fine-tuned against).")
    val = metrics.get("val_images", {})
    return {key: val.get(key, math.nan) for key in REFERENCE_KEYS}


def check_keeps_up(cfg: KeepsUpConfig) -> KeepsUpResult:
    """The reward of ``cfg.reward`` on round ``cfg.round``'s labels."""
    root, reward = Path(cfg.root), Path(cfg.reward)
    store = Store(root)
    gens = read_table(root, "generations")
    k = resolve_rounds("last:1", rounds_in(store, gens))[0] if cfg.round is None else \
        resolve_rounds(str(cfg.round), rounds_in(store, gens))[0]
    reference = _reference(reward, root, k)
    labels = read_table(root, "binary_labels", rounds=str(k))
    if labels.empty:
        raise UserError(f"round {k} of {root} has no binary labels yet.",
                        "label the round first (make label, or make simulate-raters), then check.")
    picks = read_table(root, "selections", rounds=str(k))
    random_ids = set(picks.loc[picks["uncertainty"].isna() & (picks["method"] != "all"), "image_id"])
    uncertain = bool(len(picks)) and bool(picks["uncertainty"].notna().any())
    agg = aggregate_binary(labels, "majority")
    rankings = read_table(root, "rankings", rounds=str(k))
    pairs = _pairs(rankings)
    use_random = uncertain and len(agg[agg["image_id"].isin(random_ids)]) >= cfg.min_images
    if use_random:
        agg = agg[agg["image_id"].isin(random_ids)]
        pairs = pairs[pairs["image_0"].isin(random_ids) & pairs["image_1"].isin(random_ids)]
    pairs = pairs[pairs["label_0"] != 0.5]

    model = LearnedReward.load(reward, None if cfg.device == "auto" else cfg.device, batch_size=cfg.batch_size)
    scores = _score(model, root, gens, sorted(set(agg["image_id"]) | set(pairs["image_0"]) | set(pairs["image_1"])))
    y = agg["target"].to_numpy() > 0.5
    s = np.array([scores[i] for i in agg["image_id"]])
    auc = _auc(y, s)
    acc = float(((s >= 0.5) == y).mean()) if len(y) else math.nan
    pair_acc = pair_accuracy(np.array([scores[i] for i in pairs["image_0"]]),
                             np.array([scores[i] for i in pairs["image_1"]]), pairs["label_0"].to_numpy() > 0.5)
    ref_auc = reference["binary_auc"]
    keeps = None if not (math.isfinite(auc) and math.isfinite(ref_auc)) else bool(auc >= ref_auc - cfg.tolerance)
    return KeepsUpResult(
        reward_model=model.model_id, root=str(root), round=int(k),
        sample="random picks" if use_random else "all labelled", biased_sample=uncertain and not use_random,
        labelled_images=int(len(y)), binary_auc=auc, binary_auc_se=auc_standard_error(auc, int(y.sum()), int((~y).sum())),
        binary_accuracy=acc, pairwise_accuracy_vs_labels=pair_acc, label_pairs=int(len(pairs)),
        reference=reference, keeps_up=keeps)


def _pairs(rankings: pd.DataFrame) -> pd.DataFrame:
    """The ranking pairs (:func:`data.pairs.rankings_to_pairs`) of the rankings rows given."""
    if rankings.empty:
        return pd.DataFrame({"image_0": [], "image_1": [], "label_0": []})
    return rankings_to_pairs(pa.Table.from_pandas(rankings, preserve_index=False)).to_pandas()


def _score(model: LearnedReward, root: Path, gens: pd.DataFrame, image_ids: list[str]) -> dict:
    """image_id -> the reward's calibrated P(good) with the image's own prompt."""
    rows = gens.set_index("image_id", drop=False).loc[image_ids]
    out: dict[str, float] = {}
    for start in range(0, len(rows), model.batch_size):
        chunk = rows.iloc[start:start + model.batch_size]
        images = [load_image(root, r) for _, r in chunk.iterrows()]
        out.update(zip(chunk["image_id"], model.score(images, chunk["prompt"].tolist()).cpu().numpy().tolist()))
    return out
