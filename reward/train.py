"""Training the reward model on the labels of a dataset root, with baselines and an ablation.

``train_reward(cfg)`` does the whole of ``make reward``:

1. reads and splits the labels (:mod:`reward.data`);
2. embeds every labelled image and every prompt (and perturbed prompt) once with the frozen CLIP;
3. evaluates baselines on both validation views (``val_images``: unseen images of the trained
   prompts; ``val_prompts``: prompts never trained on): zero-shot CLIP (the cosine of image and
   prompt embeddings; its probability is a logistic fit of the cosine on the training labels), the
   untrained head and, in the shapes world, a head trained on the oracle's labels of the same
   images and pairs (:func:`relabel_with_oracle`);
4. ablation: heads trained with and without the auxiliary loss (``train.ablation_seeds`` seeds
   each) on the cached embeddings, evaluated on the primary view (``val_images``);
5. the model itself: with a frozen backbone, the with-auxiliary head of the first seed; with
   ``model.train_last_layers > 0``, CLIP's last layers are trained too (images re-embedded every
   step);
6. with ``model.epistemic`` (default), the last layer's posterior on the training rows
   (:mod:`reward.epistemic`) and its spread's calibration on the validation views
   (``metrics["epistemic"]``);
7. in the shapes world, the oracle pair accuracy on each round's validation images
   (``metrics["by_round"]``, :func:`reward.evaluation.by_round`; ``data.rounds`` picks the rounds
   whose labels train);
8. with marks in the root (``region.head``), the region head on the final CLIP's patch tokens
   (:mod:`reward.region.fit`, ``metrics["region"]``);
9. writes the folder (model, ``config.yaml``, ``metrics.json``) and returns the metrics.

This module holds that orchestration; the parts live in :mod:`reward.embeddings`, :mod:`reward.fit`,
:mod:`reward.calibrate`, :mod:`reward.evaluation`, :mod:`reward.oracle`, :mod:`reward.baselines`,
:mod:`reward.summary` (metrics.json and the table) and :mod:`reward.output` (the folder).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.jsonable import json_safe
from core.loading import default_device, load_clip
from data.store import Store
from reward.baselines import aux_ablation, baselines
from reward.calibrate import calibrate, calibrated_probs
from reward.config import RewardConfig
from reward.data import VIEWS, load_reward_data
from reward.embeddings import Embeddings
from reward.evaluation import by_round, epistemic_calibration, evaluate_views, same_prompt_images
from reward.fit import fit
from reward.model import RewardModel
from reward.oracle import oracle_scores, relabel_with_oracle
from reward.output import check_out_dir, write_model_folder
from reward.region.fit import region_wanted, train_region
from reward.summary import assemble_metrics
from shapes import SHAPES_CLIP


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict
    model: RewardModel


def _load_clip(cfg: RewardConfig, device):
    try:
        return load_clip(cfg.model.clip, device=device)
    except UserError as e:
        if Path(cfg.model.clip).resolve() == SHAPES_CLIP.resolve() and not SHAPES_CLIP.is_dir():
            raise UserError(e.problem, "the shapes-world CLIP ships in shapes/models/shapes-clip (check "
                            "out the full repository), or pass model.clip=<a CLIPModel folder, e.g. "
                            "clip-vit-large-patch14>.") from None
        raise


def train_reward(cfg: RewardConfig) -> TrainResult:
    out = Path(cfg.out_dir)
    check_out_dir(out, cfg.overwrite)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    device = default_device() if cfg.device == "auto" else torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available.", "set device=auto or cpu.")
    progress = cfg.progress
    t0 = time.perf_counter()

    store = Store(cfg.data.root)
    data = load_reward_data(store, cfg.data, cfg.loss)
    region_wanted(cfg, store)  # region.head=on without marks fails before any training
    clip = _load_clip(cfg, device)
    mc = cfg.model
    build = lambda seed: RewardModel.build(clip, features=mc.features, hidden=mc.hidden,  # noqa: E731
                                           dropout=mc.dropout, cosine_skip=mc.cosine_skip, seed=seed)
    model = build(cfg.train.seed)
    emb = Embeddings(model, data, cached=True, batch_size=cfg.train.embed_batch_size, progress=progress)

    # Feature standardisation from the training images with their own prompts.
    tr = np.unique(np.concatenate([data.train.binary.image, data.train.pairs.image_0, data.train.pairs.image_1]))
    tr_t, tr_prompt = torch.as_tensor(tr, device=device), torch.as_tensor(data.image_prompt[tr], device=device)
    stats = (emb.image_cache[tr_t], emb.text_cache[tr_prompt])

    def fresh(seed: int) -> RewardModel:
        m = build(seed)
        m.head.set_feature_stats(*stats)
        return m

    # The view the aux ablation (and the reward bench's targets) use: unseen images of trained prompts.
    primary = next((v for v in VIEWS if len(getattr(data, v).images)), None)
    if primary is None:
        raise UserError("no labelled image is held out for validation.",
                        "set data.val_image_fraction > 0 (or hold out prompts with data.val_split).")
    # The oracle judges every image of the validation views' prompts (their pairs' partners) and,
    # for the oracle-labelled head, the training and selection images: each image once.
    judged = np.union1d(same_prompt_images(data, data.val_images), data.val_prompts.images)
    relabel = cfg.data.labels == "oracle" or cfg.train.baselines
    if relabel:
        judged = np.union1d(judged, np.concatenate([s.images for s in (data.train, data.select) if s is not None]))
    oracle = oracle_scores(data, judged, progress) if cfg.data.oracle == "auto" else None
    results: dict[str, dict] = {}
    aux = cfg.loss.aux_weight
    # the training labels replaced by the oracle's
    ideal = relabel_with_oracle(data, oracle) if oracle is not None and relabel else None
    if cfg.data.labels == "oracle":
        if ideal is None:
            raise UserError("data.labels=oracle needs shapes-world prompts and data.oracle=auto.",
                            "use data.labels=raters for this dataset.")
        data = ideal

    if cfg.train.baselines:
        results.update(baselines(cfg, emb, data, ideal, oracle, fresh, device, progress))

    ablation = None
    main_frozen: RewardModel | None = None
    if cfg.train.ablate_aux and aux > 0 and cfg.train.ablation_seeds > 0:
        ablation, main_frozen = aux_ablation(cfg, emb, data, oracle, fresh, primary, progress)

    # The model itself.
    if main_frozen is not None:
        model = main_frozen
    else:
        model = fresh(cfg.train.seed)
        if mc.train_last_layers > 0:
            params = model.unfreeze_last_layers(mc.train_last_layers)
            live = Embeddings(model, data, cached=False, batch_size=cfg.train.embed_batch_size)
            fit(model, live, data, cfg, aux_weight=aux, seed=cfg.train.seed, backbone_params=params,
                progress=progress, desc="training (last layers + head)")
            model.clip.requires_grad_(False)
            emb = Embeddings(model, data, cached=True, batch_size=cfg.train.embed_batch_size)
        else:
            fit(model, emb, data, cfg, aux_weight=aux, seed=cfg.train.seed, progress=progress)
    if main_frozen is None:
        calibrate(model, emb, data)
    if mc.epistemic == "linear-ucb":  # the last layer's posterior on the rows it trained on
        model.fit_epistemic(emb.image_cache[tr_t], emb.text_cache[tr_prompt], mc.epistemic_lambda)
    results["reward_model"] = evaluate_views(model.head, partial(calibrated_probs, model.head), emb, data, oracle)

    metrics = assemble_metrics(results, ablation, data, cfg, model, oracle is not None, primary,
                               time.perf_counter() - t0)
    # Pairwise accuracy vs the oracle on each round's validation images (data.rounds: the loop).
    metrics["by_round"] = json_safe(by_round(model.head, emb, data, oracle), digits=4)
    if oracle is None:
        metrics["by_round_note"] = ("by_round is the shapes-world oracle's pair accuracy per round: empty on "
                                    "prompts that are not all shapes-world prompts.")
    if model.epistemic is not None:  # does the spread point at the errors? (docs/reward.md)
        ep = model.epistemic
        metrics["epistemic"] = json_safe({"kind": ep.kind, "lambda": ep.lam, "rows": ep.rows, **epistemic_calibration(
            model.head, ep.covariance, emb, data, oracle)}, digits=4)
    # The region head (reward.region.fit), on the final CLIP's patch tokens, when there are marks.
    if region_wanted(cfg, store):
        metrics["region"] = json_safe(train_region(cfg, model, data, store, progress), digits=4)
    out_dir = write_model_folder(model, cfg, metrics, out)
    metrics["model_id"] = model.model_id
    return TrainResult(out_dir, metrics, model)
