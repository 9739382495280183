"""Evaluating a head on the validation views: per-image predictions from cached embeddings
(:func:`predict`) and the metrics of :mod:`reward.metrics` on each view (:func:`evaluate_views`)."""

from __future__ import annotations

import numpy as np
import torch

from reward.data import VIEWS, RewardData, Split
from reward.embeddings import Embeddings
from reward.metrics import evaluate


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


def same_prompt_images(data: RewardData, split: Split) -> np.ndarray:
    """Every labelled image of the split's prompts (int64), the partners of its oracle pairs."""
    return np.flatnonzero(data.images["prompt_id"].isin(split.prompt_ids).to_numpy()).astype(np.int64)

