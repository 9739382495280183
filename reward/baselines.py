"""What a reward model is measured against, trained on the same cached embeddings: the baselines
(:func:`baselines`: zero-shot CLIP, the untrained head and, in the shapes world, the head trained on
the oracle's labels) and the auxiliary-loss ablation (:func:`aux_ablation`: heads trained with and
without it over several seeds)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch

from reward.calibrate import calibrate, calibrated_probs, sigmoid, zero_shot_probs
from reward.config import RewardConfig
from reward.data import RewardData
from reward.embeddings import Embeddings
from reward.evaluation import evaluate_views
from reward.fit import fit
from reward.model import RewardModel


def baselines(cfg: RewardConfig, emb: Embeddings, data: RewardData, ideal: RewardData | None, oracle,
              fresh: Callable[[int], RewardModel], device, progress: bool) -> dict[str, dict]:
    """``{baseline: {view: metrics}}``.  ``ideal``: ``data`` relabelled by the oracle (None outside
    the shapes world); ``fresh(seed)``: a new head with the training feature statistics."""
    results: dict[str, dict] = {}
    cos_fn = lambda i, t: (i * t).sum(-1)  # noqa: E731
    cos_all = (emb.image_cache * emb.text_cache[torch.as_tensor(data.image_prompt, device=device)]).sum(-1).cpu().numpy()
    zero_shot = zero_shot_probs(data, cos_all)
    results["zero_shot_clip"] = evaluate_views(cos_fn, lambda _: zero_shot, emb, data, oracle)
    untrained = fresh(cfg.train.seed)
    results["untrained_head"] = evaluate_views(untrained.head, sigmoid, emb, data, oracle)
    if ideal is not None and cfg.data.labels == "raters":
        # The same head and label budget with noise-free labels: what better raters could buy.
        # Where it is no better than the trained head, the CLIP features are the limit.
        m = fresh(cfg.train.seed)
        fit(m, emb, ideal, cfg, aux_weight=cfg.loss.aux_weight, seed=cfg.train.seed, progress=progress,
            desc="oracle-labelled head")
        calibrate(m, emb, ideal)
        results["oracle_labels_head"] = evaluate_views(m.head, partial(calibrated_probs, m.head), emb, data, oracle)
    return results


def _summ(runs: list[dict]) -> tuple[dict, dict]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    mean = {k: float(np.nanmean([r[k] for r in runs])) if any(np.isfinite(r[k]) for r in runs) else float("nan") for k in keys}
    std = {k: float(np.nanstd([r[k] for r in runs])) if any(np.isfinite(r[k]) for r in runs) else float("nan") for k in keys}
    return mean, std


def aux_ablation(cfg: RewardConfig, emb: Embeddings, data: RewardData, oracle,
                 fresh: Callable[[int], RewardModel], primary: str, progress: bool
                 ) -> tuple[dict, RewardModel | None]:
    """Heads trained with and without the auxiliary loss (``train.ablation_seeds`` seeds each),
    evaluated on the ``primary`` view.  Returns the ablation (metrics.json's ``aux_ablation``) and,
    with a frozen backbone, the with-auxiliary head of ``train.seed`` (the model itself), else None."""
    aux = cfg.loss.aux_weight
    main_frozen: RewardModel | None = None
    runs = {"with_aux": [], "without_aux": []}
    seeds = [cfg.train.seed + k for k in range(cfg.train.ablation_seeds)]
    for seed in seeds:
        for name, w in (("with_aux", aux), ("without_aux", 0.0)):
            m = fresh(seed)
            fit(m, emb, data, cfg, aux_weight=w, seed=seed, progress=progress,
                desc=f"ablation {name} seed {seed}")
            calibrate(m, emb, data)
            runs[name].append(evaluate_views(m.head, partial(calibrated_probs, m.head), emb, data, oracle)[primary])
            if name == "with_aux" and seed == cfg.train.seed and cfg.model.train_last_layers == 0:
                main_frozen = m
    w_mean, w_std = _summ(runs["with_aux"])
    o_mean, o_std = _summ(runs["without_aux"])
    ref = "pairwise_accuracy_vs_oracle" if oracle is not None else "pairwise_accuracy_vs_labels"
    diffs = np.array([w[ref] - o[ref] for w, o in zip(runs["with_aux"], runs["without_aux"])])
    sem = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    ablation = dict(aux_weight=aux, seeds=seeds, evaluated_on=primary,
                    with_aux=w_mean, with_aux_std=w_std, without_aux=o_mean, without_aux_std=o_std,
                    delta={k: w_mean[k] - o_mean[k] for k in w_mean},
                    paired_delta=dict(metric=ref, mean=float(diffs.mean()), sem=sem),
                    per_seed=runs)
    return ablation, main_frozen
