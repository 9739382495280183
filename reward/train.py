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
6. writes the folder (model, ``config.yaml``, ``metrics.json``) and returns the metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.config import save_config
from core.errors import UserError
from core.jsonable import json_safe
from core.loading import default_device, load_clip
from data.generations import load_image
from data.store import Store
from reward.config import RewardConfig
from reward.data import VIEWS, AuxExamples, RewardData, Split, load_reward_data
from reward.losses import binary_loss, bradley_terry_loss, per_group_weights, prompt_classification_loss
from reward.metrics import TABLE_ROWS, evaluate, format_table
from reward.model import CONFIG_FILE, METRICS_FILE, TRAIN_CONFIG_FILE, RewardModel
from reward.preprocess import to_pixel_batches
from shapes import SHAPES_CLIP
from shapes.oracle import judge
from shapes.world import Prompt


# The model and its baselines, in the order of metrics.json keys and the printed table; a baseline's
# keys carry its name as a prefix.
MODELS = ("reward_model", "zero_shot_clip", "untrained_head", "oracle_labels_head")


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict
    model: RewardModel


# ---------------------------------------------------------------------------------------------
# Embeddings


class Embeddings:
    """Image and text embeddings by index into ``data.images`` / ``data.prompts``.

    Cached: computed once with the frozen CLIP.  Live (trainable backbone): computed by ``model``
    on each call, with the graph, from the image files.
    """

    def __init__(self, model: RewardModel, data: RewardData, *, cached: bool, batch_size: int,
                 progress: bool = False):
        self.model, self.data, self.cached = model, data, cached
        self.batch_size = batch_size
        if cached:
            self.image_cache = self._embed_all_images(progress)
            with torch.no_grad():
                self.text_cache = torch.cat([model.embed_texts(data.prompts[i:i + 1024])
                                             for i in range(0, len(data.prompts), 1024)])

    def _load(self, idx) -> list:
        rows = self.data.images.iloc[np.asarray(idx)]
        return [load_image(self.data.root, r) for _, r in rows.iterrows()]

    @torch.no_grad()
    def _embed_all_images(self, progress: bool) -> torch.Tensor:
        n = len(self.data.images)
        out = []
        bar = tqdm(total=n, desc="embedding images", unit="img", disable=not progress, file=sys.stderr)
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(n, start + self.batch_size))
            out.append(self.model.embed_images(self._load(idx)))
            bar.update(len(idx))
        bar.close()
        return torch.cat(out)

    def images(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.image_cache[idx]
        return torch.cat([self.model.embed_pixels(b) for b in
                          to_pixel_batches(self._load(idx.cpu().numpy()), self.model.device)])

    def texts(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.text_cache[idx]
        return self.model.embed_texts([self.data.prompts[i] for i in idx.cpu().tolist()])


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass
class _Tensors:
    """A split's examples as tensors on the device."""

    b_img: torch.Tensor
    b_prompt: torch.Tensor
    b_target: torch.Tensor
    b_weight: torch.Tensor
    p_img0: torch.Tensor
    p_img1: torch.Tensor
    p_prompt: torch.Tensor
    p_label: torch.Tensor
    p_weight: torch.Tensor
    a_img: torch.Tensor
    a_prompt: torch.Tensor
    a_pool: torch.Tensor


def _tensors(split: Split, data: RewardData, per_prompt: bool, device) -> _Tensors:
    def t(x, dtype=torch.long):
        return torch.as_tensor(np.array(x), dtype=dtype, device=device)

    b, p, a = split.binary, split.pairs, split.aux
    ones = lambda n: torch.ones(n, device=device)  # noqa: E731
    return _Tensors(
        t(b.image), t(data.image_prompt[b.image]), t(b.target, torch.float32),
        per_group_weights(b.prompt_id).to(device) if per_prompt and len(b.image) else ones(len(b.image)),
        t(p.image_0), t(p.image_1), t(data.image_prompt[p.image_0]), t(p.label_0, torch.float32),
        per_group_weights(p.prompt_id).to(device) if per_prompt and len(p.image_0) else ones(len(p.image_0)),
        t(a.image), t(a.prompt), t(a.pool) if a.pool.size else torch.zeros((len(a.image), 0), dtype=torch.long, device=device),
    )


def _pick_perturbed(pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k random entries of each row of ``pool`` (B, P), -1 where a row has fewer than k."""
    if pool.shape[1] == 0 or k == 0:
        return pool[:, :0]
    keys = torch.rand(pool.shape, generator=gen, device="cpu").to(pool.device)
    keys = keys.masked_fill(pool < 0, -1.0)  # real entries first
    pick = keys.topk(min(k, pool.shape[1]), dim=1).indices
    return pool.gather(1, pick)


@contextmanager
def _cpu_threads(n: int, active: bool):
    """Temporarily use ``n`` torch CPU threads.  A head on cached embeddings is a few small
    matmuls per step: on one thread they ran ~10x faster than on two on a 2-core machine shared
    with other processes (0.76 s vs 8.3 s for 5 epochs), as intra-op threads wait on each other."""
    before = torch.get_num_threads()
    if active:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(model: RewardModel, emb: Embeddings, data: RewardData, cfg: RewardConfig, *,
        aux_weight: float, seed: int, backbone_params: list | None = None,
        progress: bool = False, desc: str = "training") -> list[float]:
    """Train ``model.head`` (and ``backbone_params``) on ``data.train``; returns loss per epoch.

    Each step takes a slice of the binary examples, of the ranking pairs and of the auxiliary
    examples, sized so that one epoch passes over each once:
    loss = w_b * binary + w_r * Bradley-Terry + lambda * prompt classification.
    """
    lc, tc = cfg.loss, cfg.train
    device = model.device
    T = _tensors(data.train, data, lc.per_prompt_weighting, device)
    n_b = len(T.b_img) if lc.binary != "none" else 0
    n_p = len(T.p_img0) if lc.ranking != "none" else 0
    n_a = len(T.a_img) if aux_weight > 0 and T.a_pool.shape[1] > 0 else 0
    steps = max(1, math.ceil(max(n_b, n_p, 1) / tc.batch_size))
    gen = torch.Generator().manual_seed(seed)
    groups = [{"params": list(model.head.parameters()), "lr": tc.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": tc.backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=tc.weight_decay)
    total = tc.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 5 % of the steps, cosine decay
        opt, lambda s: min(1.0, (s + 1) / max(1.0, 0.05 * total)) * 0.5 * (1 + math.cos(math.pi * s / total)))

    def slices(n: int):
        """``steps`` index tensors covering a fresh permutation of range(n) (None if n == 0)."""
        if not n:
            return [None] * steps
        perm = torch.randperm(n, generator=gen).to(device)
        per = math.ceil(n / steps)
        return [perm[torch.arange(s * per, (s + 1) * per, device=device) % n] for s in range(steps)]

    # Early stopping: the state with the lowest feedback loss on the selection images, checked
    # before training and after every epoch.
    S = _tensors(data.select, data, lc.per_prompt_weighting, device) if data.select is not None else None
    tracked = [p for p in model.head.parameters()] + list(backbone_params or [])
    tracked += [b for b in model.head.buffers()]
    best = {"loss": float("inf"), "epoch": -1, "state": None}

    def checkpoint(epoch: int) -> None:
        if S is None:
            return
        loss = _feedback_loss(model, emb, S, lc)
        if loss < best["loss"]:
            best.update(loss=loss, epoch=epoch, state=[t.detach().clone() for t in tracked])

    history: list[float] = []
    # Dropout draws from the global RNG: fork and seed it so a run is reproducible whatever ran
    # before it.
    rng_devices = [device] if device.type == "cuda" else []
    with _cpu_threads(1, emb.cached and device.type == "cpu"), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        checkpoint(0)
        model.train()
        if emb.cached:
            model.clip.eval()
        bar = tqdm(range(tc.epochs), desc=desc, unit="epoch", disable=not progress, file=sys.stderr)
        for _epoch in bar:
            epoch_loss = 0.0
            for ib, ip, ia in zip(slices(n_b), slices(n_p), slices(n_a)):
                cand = None
                if ia is not None:  # true prompt in column 0, then N - 1 perturbed ones (-1: none)
                    chosen = _pick_perturbed(T.a_pool[ia], lc.aux_num_prompts - 1, gen)
                    cand = torch.cat([T.a_prompt[ia][:, None], chosen], dim=1)
                logits = _step_embeddings(model.head, emb, T, ib, ip, ia, cand)
                loss = torch.zeros((), device=device)
                if ib is not None:
                    loss = loss + lc.binary_weight * binary_loss(
                        logits("b"), T.b_target[ib], T.b_weight[ib], lc.binary)
                if ip is not None:
                    loss = loss + lc.ranking_weight * bradley_terry_loss(
                        logits("p0"), logits("p1"), T.p_label[ip], T.p_weight[ip])
                if cand is not None:
                    loss = loss + aux_weight * prompt_classification_loss(
                        logits("a"), cand >= 0, lc.aux_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                epoch_loss += float(loss.detach())
            history.append(epoch_loss / steps)
            checkpoint(_epoch + 1)
            model.train()
            if emb.cached:
                model.clip.eval()
            bar.set_postfix(loss=f"{history[-1]:.4f}", best_epoch=best["epoch"])
        if best["state"] is not None:
            with torch.no_grad():
                for t, v in zip(tracked, best["state"]):
                    t.copy_(v)
    model.eval()
    model.best_epoch = best["epoch"] if S is not None else tc.epochs
    return history


@torch.no_grad()
def _feedback_loss(model: RewardModel, emb: Embeddings, S: _Tensors, lc) -> float:
    """Binary + Bradley-Terry loss of the current model on a whole split (no auxiliary term:
    early stopping judges how well the model predicts feedback)."""
    was = model.training
    model.eval()
    n_b = len(S.b_img) if lc.binary != "none" else 0
    n_p = len(S.p_img0) if lc.ranking != "none" else 0
    ib = torch.arange(n_b, device=S.b_img.device) if n_b else None
    ip = torch.arange(n_p, device=S.p_img0.device) if n_p else None
    logits = _step_embeddings(model.head, emb, S, ib, ip, None, None)
    loss = 0.0
    if ib is not None:
        loss += lc.binary_weight * float(binary_loss(logits("b"), S.b_target, S.b_weight, lc.binary))
    if ip is not None:
        loss += lc.ranking_weight * float(bradley_terry_loss(logits("p0"), logits("p1"), S.p_label, S.p_weight))
    model.train(was)
    return loss


def _step_embeddings(head, emb: Embeddings, T: _Tensors, ib, ip, ia, cand):
    """Returns ``logits(part)`` for part b (binary), p0 / p1 (pairs), a (auxiliary, (k, N)).

    Cached embeddings are indexed directly; live ones (trainable backbone) are computed once per
    distinct image and prompt of the step."""
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if ib is not None:
        rows["b"] = (T.b_img[ib], T.b_prompt[ib])
    if ip is not None:
        rows["p0"] = (T.p_img0[ip], T.p_prompt[ip])
        rows["p1"] = (T.p_img1[ip], T.p_prompt[ip])
    if cand is not None:
        k, n = cand.shape
        rows["a"] = (T.a_img[ia][:, None].expand(k, n).reshape(-1), cand.clamp_min(0).reshape(-1))
    if emb.cached:
        get_img, get_txt = emb.image_cache.__getitem__, emb.text_cache.__getitem__
    else:
        uimg = torch.unique(torch.cat([r[0] for r in rows.values()]))
        utxt = torch.unique(torch.cat([r[1] for r in rows.values()]))
        e_img, e_txt = emb.images(uimg), emb.texts(utxt)
        get_img = lambda i: e_img[torch.searchsorted(uimg, i)]  # noqa: E731
        get_txt = lambda t: e_txt[torch.searchsorted(utxt, t)]  # noqa: E731

    def logits(part: str) -> torch.Tensor:
        i, t = rows[part]
        out = head(get_img(i), get_txt(t))
        return out.view(cand.shape) if part == "a" else out

    return logits


# ---------------------------------------------------------------------------------------------
# Evaluation


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
        partners = _same_prompt_images(data, split)
        pred = predict(head_fn, emb, data, split, extra_images=partners)
        out[view] = evaluate(split, pred["logits"], probs_fn(pred["logits"]),
                             prompt_of=data.images["prompt_id"].to_numpy(), oracle=oracle,
                             aux_true=pred["aux_true"], aux_perturbed=pred["aux_perturbed"], partners=partners)
    return out


def _same_prompt_images(data: RewardData, split: Split) -> np.ndarray:
    """Every labelled image of the split's prompts (int64), the partners of its oracle pairs."""
    return np.flatnonzero(data.images["prompt_id"].isin(split.prompt_ids).to_numpy()).astype(np.int64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _probs(head, logits: np.ndarray) -> np.ndarray:
    return _sigmoid(float(head.calib_scale) * logits + float(head.calib_bias))


@torch.no_grad()
def calibrate(model: RewardModel, emb: Embeddings, data: RewardData) -> bool:
    """Platt-scale the head's logit on the selection images' binary labels (a monotone map:
    rankings do not change).  Returns False (identity kept) without such labels of both kinds."""
    from sklearn.linear_model import LogisticRegression

    if data.select is None:
        return False
    b = data.select.binary
    decided = b.target != 0.5
    y = (b.target[decided] > 0.5).astype(int)
    if len(np.unique(y)) < 2:
        return False
    pred = predict(model.head, emb, data, data.select)["logits"][b.image[decided]]
    lr = LogisticRegression(C=1e4).fit(pred[:, None], y)
    model.head.calib_scale.fill_(float(lr.coef_[0, 0]))
    model.head.calib_bias.fill_(float(lr.intercept_[0]))
    return True


def oracle_scores(data: RewardData, images: np.ndarray, progress: bool = False) -> np.ndarray | None:
    """The shapes oracle's graded score of ``images`` (NaN elsewhere); None outside the shapes
    world."""
    out = np.full(len(data.images), np.nan)
    try:
        prompts = {i: Prompt.parse(data.images["prompt"].iloc[i]) for i in images}
    except UserError:
        return None
    for i in tqdm(images, desc="oracle", unit="img", disable=not progress, file=sys.stderr):
        out[i] = judge(load_image(data.root, data.images.iloc[i]), prompts[i]).score(prompts[i])
    return out


def relabel_with_oracle(data: RewardData, truth: np.ndarray) -> RewardData:
    """``data`` with the training and selection labels replaced by the oracle's: binary target =
    aligned (graded score >= 2), ranking pair label = which image the graded score prefers (0.5 on
    equal scores), auxiliary examples = the aligned images.  Same images, same pairs: only the
    label noise is gone.  ``truth``: (n_images,) graded scores, NaN where not judged."""
    def relabel(s: Split | None) -> Split | None:
        if s is None:
            return None
        b, p, a = s.binary, s.pairs, s.aux
        aligned = truth[b.image] >= 2.0
        o0, o1 = truth[p.image_0], truth[p.image_1]
        label = np.where(o0 > o1, 1.0, np.where(o0 < o1, 0.0, 0.5)).astype(np.float32)
        # Perturbation pools are per prompt; prompts with no rater-approved image have none.
        pool_of = {int(q): row for q, row in zip(a.prompt, a.pool)}
        good = b.image[aligned & np.isin(data.image_prompt[b.image], list(pool_of))]
        prompts = data.image_prompt[good]
        pool = np.stack([pool_of[int(q)] for q in prompts]) if len(good) else a.pool[:0]
        return replace(s, binary=replace(b, target=aligned.astype(np.float32)),
                       pairs=replace(p, label_0=label), aux=AuxExamples(good, prompts, pool))

    return replace(data, train=relabel(data.train), select=relabel(data.select))


def _zero_shot_probs(data: RewardData, cos: np.ndarray) -> np.ndarray | None:
    """Platt scaling of the cosine on the training binary labels (so accuracy and ECE of the
    zero-shot baseline mean something); None without training binary labels of both kinds."""
    from sklearn.linear_model import LogisticRegression

    b = data.train.binary
    decided = b.target != 0.5
    y = (b.target[decided] > 0.5).astype(int)
    if len(np.unique(y)) < 2:
        return None
    lr = LogisticRegression(C=1e4).fit(cos[b.image[decided]][:, None], y)
    out = np.full_like(cos, np.nan)
    ok = np.isfinite(cos)
    out[ok] = lr.predict_proba(cos[ok][:, None])[:, 1]
    return out


# ---------------------------------------------------------------------------------------------
# The whole run


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        what = "a trained reward model" if (out / CONFIG_FILE).is_file() else "files"
        raise UserError(f"{out} already holds {what}; it is kept.",
                        "pass overwrite=true to replace it, or out_dir=<another folder>.")


def _load_clip(cfg: RewardConfig, device):
    try:
        return load_clip(cfg.model.clip, device=device)
    except UserError as e:
        if Path(cfg.model.clip).resolve() == SHAPES_CLIP.resolve() and not SHAPES_CLIP.is_dir():
            raise UserError(e.problem, "the shapes-world CLIP ships in shapes/models/shapes-clip (check "
                            "out the full repository), or pass model.clip=<a CLIPModel folder, e.g. "
                            "clip-vit-large-patch14>.") from None
        raise


def _summ(runs: list[dict]) -> tuple[dict, dict]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], float)]
    mean = {k: float(np.nanmean([r[k] for r in runs])) if any(np.isfinite(r[k]) for r in runs) else float("nan") for k in keys}
    std = {k: float(np.nanstd([r[k] for r in runs])) if any(np.isfinite(r[k]) for r in runs) else float("nan") for k in keys}
    return mean, std


def train_reward(cfg: RewardConfig) -> TrainResult:
    out = Path(cfg.out_dir)
    _check_out_dir(out, cfg.overwrite)
    for name, v in (("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size),
                    ("loss.aux_num_prompts", cfg.loss.aux_num_prompts)):
        if v < 1 or (name == "loss.aux_num_prompts" and v < 2):
            raise UserError(f"{name}={v} is too small.", f"set {name} to at least {2 if 'aux' in name else 1}.")
    if cfg.loss.aux_temperature <= 0:
        raise UserError("loss.aux_temperature must be > 0.", "set it to e.g. 1.0.")
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    device = default_device() if cfg.device == "auto" else torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available.", "set device=auto or cpu.")
    progress = cfg.progress
    t0 = time.perf_counter()

    data = load_reward_data(Store(cfg.data.root), cfg.data, cfg.loss)
    clip = _load_clip(cfg, device)
    mc = cfg.model
    build = lambda seed: RewardModel.build(clip, features=mc.features, hidden=mc.hidden,  # noqa: E731
                                           dropout=mc.dropout, cosine_skip=mc.cosine_skip, seed=seed)
    model = build(cfg.train.seed)
    emb = Embeddings(model, data, cached=True, batch_size=cfg.train.embed_batch_size, progress=progress)

    # Feature standardisation from the training images with their own prompts.
    tr = np.unique(np.concatenate([data.train.binary.image, data.train.pairs.image_0, data.train.pairs.image_1]))
    tr_t = torch.as_tensor(tr, device=device)
    stats = (emb.image_cache[tr_t], emb.text_cache[torch.as_tensor(data.image_prompt[tr], device=device)])

    def fresh(seed: int) -> RewardModel:
        m = build(seed)
        m.head.set_feature_stats(*stats)
        return m

    # The view the aux ablation and the headline targets use: unseen images of trained prompts.
    primary = next((v for v in VIEWS if len(getattr(data, v).images)), None)
    if primary is None:
        raise UserError("no labelled image is held out for validation.",
                        "set data.val_image_fraction > 0 (or hold out prompts with data.val_split).")
    # The oracle judges every image of the validation views' prompts (their pairs' partners) and,
    # for the oracle-labelled head, the training and selection images: each image once.
    judged = np.union1d(_same_prompt_images(data, data.val_images), data.val_prompts.images)
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
        cos_fn = lambda i, t: (i * t).sum(-1)  # noqa: E731
        cos_all = (emb.image_cache * emb.text_cache[torch.as_tensor(data.image_prompt, device=device)]).sum(-1).cpu().numpy()
        zero_shot = _zero_shot_probs(data, cos_all)
        results["zero_shot_clip"] = evaluate_views(cos_fn, lambda _: zero_shot, emb, data, oracle)
        untrained = fresh(cfg.train.seed)
        results["untrained_head"] = evaluate_views(untrained.head, _sigmoid, emb, data, oracle)
        if ideal is not None and cfg.data.labels == "raters":
            # The same head and label budget with noise-free labels: what better raters could buy.
            # Where it is no better than the trained head, the CLIP features are the limit.
            m = fresh(cfg.train.seed)
            fit(m, emb, ideal, cfg, aux_weight=aux, seed=cfg.train.seed, progress=progress,
                desc="oracle-labelled head")
            calibrate(m, emb, ideal)
            results["oracle_labels_head"] = evaluate_views(m.head, partial(_probs, m.head), emb, data, oracle)

    ablation = None
    main_frozen: RewardModel | None = None
    if cfg.train.ablate_aux and aux > 0 and cfg.train.ablation_seeds > 0:
        runs = {"with_aux": [], "without_aux": []}
        seeds = [cfg.train.seed + k for k in range(cfg.train.ablation_seeds)]
        for seed in seeds:
            for name, w in (("with_aux", aux), ("without_aux", 0.0)):
                m = fresh(seed)
                fit(m, emb, data, cfg, aux_weight=w, seed=seed, progress=progress,
                    desc=f"ablation {name} seed {seed}")
                calibrate(m, emb, data)
                runs[name].append(evaluate_views(m.head, partial(_probs, m.head), emb, data, oracle)[primary])
                if name == "with_aux" and seed == cfg.train.seed and mc.train_last_layers == 0:
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
    results["reward_model"] = evaluate_views(model.head, partial(_probs, model.head), emb, data, oracle)

    metrics = _assemble(results, ablation, data, cfg, model, oracle is not None, primary,
                        time.perf_counter() - t0)
    out_dir = _write(model, cfg, metrics, out)
    metrics["model_id"] = model.model_id
    return TrainResult(out_dir, metrics, model)


def _assemble(results, ablation, data, cfg, model, has_oracle: bool, primary: str, seconds: float) -> dict:
    """metrics.json: per validation view a flat table (the model's metrics, each baseline's
    prefixed with its name) with its models; the targets on the primary view."""
    ref = "oracle" if has_oracle else "labels"
    m: dict = {"pairwise_reference": ref, "primary_view": primary}
    for view in VIEWS:
        if view not in results["reward_model"]:
            continue
        v: dict = {}
        for name in MODELS:
            if view not in results.get(name, {}):
                continue
            prefix = "" if name == "reward_model" else f"{name}_"
            r = results[name][view]
            for k in TABLE_ROWS:
                v[prefix + k] = r.get(k)
            # The headline pairwise accuracy: against the oracle in the shapes world, else the labels.
            v[prefix + "pairwise_accuracy"] = r[f"pairwise_accuracy_vs_{ref}"]
        if has_oracle and "zero_shot_clip_pairwise_accuracy_vs_oracle" in v:
            v["margin_over_zero_shot_clip"] = v["pairwise_accuracy_vs_oracle"] - v["zero_shot_clip_pairwise_accuracy_vs_oracle"]
        v["models"] = {name: results[name][view] for name in MODELS if view in results.get(name, {})}
        m[view] = v
    targets = {}
    p = m[primary]
    if has_oracle:
        targets[f"{primary}_pairwise_accuracy_vs_oracle>=0.85"] = bool(p["pairwise_accuracy_vs_oracle"] >= 0.85)
        if "margin_over_zero_shot_clip" in p:
            targets[f"{primary}_above_zero_shot_clip"] = bool(p["margin_over_zero_shot_clip"] > 0)
    if ablation is not None:
        # "Measurably": the paired (same seed) gain is positive and above twice its standard error.
        d = ablation["paired_delta"]
        sem = d["sem"] if d["sem"] == d["sem"] else 0.0
        targets["aux_loss_helps"] = bool(d["mean"] > 0 and d["mean"] > 2 * sem)
    m["targets"] = targets
    m["aux_ablation"] = ablation
    m["data"] = {**data.summary, "root": str(data.root), "labels": cfg.data.labels}
    m["clip"] = str(model.clip_path)
    m["train_seconds"] = seconds
    return json_safe(m, digits=4)  # metrics.json reports 4 decimals


def _write(model: RewardModel, cfg: RewardConfig, metrics: dict, out: Path) -> Path:
    """Write the folder next to ``out`` and move it into place only when complete; an existing
    folder (overwrite=true) is replaced at that moment, never before."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, name=out.name)
        metrics["model_id"] = model.model_id
        save_config(cfg, tmp / TRAIN_CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if out.exists():
            _check_out_dir(out, cfg.overwrite)  # still allowed (someone may have written meanwhile)
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def metrics_table(metrics: dict) -> str:
    parts = []
    for view in VIEWS:
        if view in metrics:
            cols = metrics[view]["models"]
            parts.append(f"{view} ({VIEW_DESCRIPTIONS[view]}):\n"
                         + format_table({c: cols[c] for c in MODELS if c in cols}))
    text = "\n\n".join(parts)
    ab = metrics.get("aux_ablation")
    if ab:
        text += (f"\n\nauxiliary loss (lambda={ab['aux_weight']}) on {ab['evaluated_on']}, mean of "
                 f"{len(ab['seeds'])} seeds:\n")
        text += format_table({"with_aux": ab["with_aux"], "without_aux": ab["without_aux"],
                              "delta": ab["delta"]})
        d = ab["paired_delta"]
        sem = "n/a" if d["sem"] is None else f"{d['sem']:.3f}"
        text += f"\npaired gain in {d['metric']}: {d['mean']:+.3f} (standard error {sem})"
    return text


VIEW_DESCRIPTIONS = {"val_images": "unseen images of the prompts the reward trained on",
                     "val_prompts": "prompts the reward never trained on"}
