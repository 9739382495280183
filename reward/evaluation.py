"""Evaluating a head on the validation views: per-image predictions from cached embeddings
(:func:`predict`) and the metrics of :mod:`reward.metrics` on each view (:func:`evaluate_views`;
the spread's calibration, :func:`epistemic_calibration`); the oracle pair accuracy per round of
the closed loop, on the validation sides (:func:`by_round`) or on every image of one round,
trained on or not (:func:`round_accuracy`)."""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from core.errors import UserError
from data.generations import load_image
from data.read import read_table
from reward.data import VIEWS, RewardData, Split
from reward.embeddings import Embeddings
from reward.epistemic import spread
from reward.metrics import evaluate, oracle_pair_accuracy, oracle_pairs, spread_calibration
from reward.model import RewardModel
from shapes.oracle import ALIGNED_MIN_SCORE, judge
from shapes.world import Prompt


@torch.no_grad()
def predict(head_fn, emb: Embeddings, data: RewardData, split: Split,
            extra_images: np.ndarray | None = None) -> dict:
    """Per-image logits with the image's own prompt (NaN outside the split's images and
    ``extra_images``), and the split's auxiliary rewards (true vs perturbed prompts).
    ``head_fn(img_emb, txt_emb) -> logits``."""
    device = emb.image_cache.device
    n = len(data.images)
    logits = torch.full((n,), float("nan"), device=device)
    images = split.images if extra_images is None else np.union1d(split.images, extra_images)
    idx = torch.as_tensor(images, device=device)
    if len(idx):
        logits[idx] = head_fn(emb.image_cache[idx], emb.text_cache[torch.as_tensor(data.image_prompt[images], device=device)])
    a = split.aux
    aux_true = aux_pert = None
    if len(a.image) and a.pool.size:
        ai = torch.as_tensor(a.image, device=device)
        aux_true = head_fn(emb.image_cache[ai], emb.text_cache[torch.as_tensor(a.prompt, device=device)])
        pool = torch.as_tensor(a.pool, device=device)
        k, P = pool.shape
        flat = head_fn(emb.image_cache[ai][:, None].expand(k, P, -1).reshape(k * P, -1),
                       emb.text_cache[pool.clamp_min(0).reshape(-1)]).view(k, P)
        aux_pert = flat.masked_fill(pool < 0, float("nan")).cpu().numpy()
        aux_true = aux_true.cpu().numpy()
    return {"logits": logits.cpu().numpy(), "aux_true": aux_true, "aux_perturbed": aux_pert}


def evaluate_views(head_fn, probs_fn, emb: Embeddings, data: RewardData, oracle) -> dict[str, dict]:
    """``{view: metrics}`` for each validation view (:data:`reward.data.VIEWS`) that has images.
    ``probs_fn(logits) -> probs`` (or None) maps the per-image logits to calibrated probabilities."""
    out = {}
    for view in VIEWS:
        split = getattr(data, view)
        if not len(split.images):
            continue
        partners = same_prompt_images(data, split)
        pred = predict(head_fn, emb, data, split, extra_images=partners)
        out[view] = evaluate(split, pred["logits"], probs_fn(pred["logits"]),
                             prompt_of=data.images["prompt_id"].to_numpy(), oracle=oracle,
                             aux_true=pred["aux_true"], aux_perturbed=pred["aux_perturbed"], partners=partners)
    return out


@torch.no_grad()
def epistemic_calibration(head, covariance: torch.Tensor, emb: Embeddings, data: RewardData, oracle) -> dict:
    """``{view: {"truth", **spread_calibration}}`` on each validation view (:mod:`reward.epistemic`,
    :func:`reward.metrics.spread_calibration`): the spread of each image with its prompt against
    |p - y|, p the calibrated probability and y the oracle's aligned verdict where the oracle
    judged the view's images (``truth`` oracle), else the raters' aggregated binary label rounded
    (``truth`` labels; ties left out)."""
    out = {}
    for view in VIEWS:
        split = getattr(data, view)
        if oracle is not None and np.isfinite(oracle[split.images]).any():
            truth, images = "oracle", split.images[np.isfinite(oracle[split.images])]
            y = (oracle[images] >= ALIGNED_MIN_SCORE).astype(float)
        else:
            b = split.binary
            truth, images = "labels", b.image[b.target != 0.5]
            y = (b.target[b.target != 0.5] > 0.5).astype(float)
        if not len(images):
            continue
        idx = torch.as_tensor(images, device=emb.image_cache.device)
        logits, phi = head.logit_and_hidden(emb.image_cache[idx], emb.text_cache[
            torch.as_tensor(data.image_prompt[images], device=idx.device)])
        p = head.probability(logits).double().cpu().numpy()
        s = spread(phi, covariance, head.calib_scale).cpu().numpy()
        out[view] = {"truth": truth, **spread_calibration(s, p, y)}
    return out


def same_prompt_images(data: RewardData, split: Split) -> np.ndarray:
    """Every labelled image of the split's prompts (int64), the partners of its oracle pairs."""
    return np.flatnonzero(data.images["prompt_id"].isin(split.prompt_ids).to_numpy()).astype(np.int64)



# ---------------------------------------------------------------------------------------------
# Rounds of the closed loop: the reward's oracle pair accuracy on one round's images


def round_pair_metrics(scores: np.ndarray, images: np.ndarray, prompt_of: np.ndarray,
                       oracle: np.ndarray, partners: np.ndarray | None = None) -> dict:
    """``{"oracle_pair_accuracy", "n_images", "n_pairs", ...}`` of ``scores`` on the oracle pairs
    of ``images`` (same prompt, different graded oracle score; ties excluded, equal rewards count
    0.5: :func:`reward.metrics.oracle_pair_accuracy`).  ``partners``: other images a pair may
    pair an image with (as the validation views pair a validation image with its prompt's
    training images); every pair touches one of ``images``.  Arrays are indexed by image; images
    with no oracle score (NaN) are left out."""
    judged = images[np.isfinite(oracle[images])]
    pool = judged if partners is None else np.union1d(judged, partners[np.isfinite(oracle[partners])])
    hi, lo = oracle_pairs(pool, prompt_of, oracle)
    touches = np.isin(hi, judged) | np.isin(lo, judged)
    detail = oracle_pair_accuracy(scores, hi[touches], lo[touches], oracle)
    return {"oracle_pair_accuracy": detail["pairwise_accuracy_vs_oracle"], "n_images": int(len(judged)),
            "n_pairs": detail["oracle_pairs"], **detail}


@torch.no_grad()
def by_round(head_fn, emb: Embeddings, data: RewardData, oracle: np.ndarray | None) -> dict[str, dict]:
    """``{"<round>": round_pair_metrics}`` on each round's images of the validation sides
    (``val_images`` and ``val_prompts``, the per-image split as in the views), each paired as in
    the views with the other labelled images of its prompt, within its round.  Empty without the
    oracle (outside the shapes world)."""
    if oracle is None:
        return {}
    val = np.union1d(data.val_images.images, data.val_prompts.images)
    if not len(val):
        return {}
    partners = np.union1d(same_prompt_images(data, data.val_images), data.val_prompts.images)
    device = emb.image_cache.device
    idx = torch.as_tensor(partners, device=device)
    logits = np.full(len(data.images), np.nan)
    logits[partners] = head_fn(emb.image_cache[idx],
                               emb.text_cache[torch.as_tensor(data.image_prompt[partners], device=device)]).cpu().numpy()
    rounds = data.images["round"].to_numpy()
    prompt_of = data.images["prompt_id"].to_numpy()
    return {str(int(r)): round_pair_metrics(logits, val[rounds[val] == r], prompt_of, oracle,
                                            partners[rounds[partners] == r])
            for r in sorted(set(rounds[val].tolist()))}


def round_accuracy(model, root, round: int, *, batch_size: int = 64, device=None, progress: bool = False) -> dict:
    """Oracle pair accuracy of a trained reward model on every image of one round of ``root``,
    labelled or not (the loop measures the reward on the newest model's images before retraining):
    ``{"round", "oracle_pair_accuracy", "n_images", "n_pairs", "reward_model", ...}`` (the keys of
    :func:`round_pair_metrics`).  ``model``: a :class:`RewardModel` or its folder.  Shapes-world
    prompts only (the oracle judges them); the reward is the logit (monotone in the probability,
    so the pair order is the same)."""
    gens = read_table(root, "generations", rounds=str(int(round)))  # a round with no images: one clear error
    gens = gens.sort_values(["prompt_id", "seed", "image_id"], kind="stable").reset_index(drop=True)
    try:
        prompts = [Prompt.parse(t) for t in gens["prompt"]]
    except UserError as e:
        raise UserError(f"round {round} of {root} has prompts outside the shapes world ({e.problem})",
                        "round_accuracy needs the shapes oracle; measure other rounds by their labels.") from None
    if not isinstance(model, RewardModel):
        model = RewardModel.from_pretrained(model, device=device)
    rows = [r for _, r in gens.iterrows()]
    oracle = np.full(len(rows), np.nan)
    scores = np.full(len(rows), np.nan)
    for start in tqdm(range(0, len(rows), batch_size), desc=f"round {round}", disable=not progress,
                      file=sys.stderr):
        part = range(start, min(start + batch_size, len(rows)))
        images = [load_image(root, rows[i]) for i in part]
        scores[start:part.stop] = model.score(images, [rows[i]["prompt"] for i in part], logits=True).cpu().numpy()
        for i, im in zip(part, images):
            oracle[i] = judge(im, prompts[i]).score(prompts[i])
    out = round_pair_metrics(scores, np.arange(len(rows)), gens["prompt_id"].to_numpy(), oracle)
    return {"round": int(round), **out, "reward_model": model.model_id}
