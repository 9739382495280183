"""The fit loop: training a reward head (and, optionally, CLIP's last layers) on a dataset's
training split with the binary, Bradley-Terry and auxiliary prompt-classification losses, early
stopping on the selection images."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from reward.config import RewardConfig
from reward.data import RewardData, Split
from reward.embeddings import Embeddings
from reward.losses import binary_loss, bradley_terry_loss, per_group_weights, prompt_classification_loss
from reward.model import RewardModel


@dataclass
class SplitTensors:
    """A split's examples as tensors on the device: image and prompt indices into the dataset's
    embeddings (``RewardData``), targets and loss weights."""

    binary_image: torch.Tensor  # (B,) image of each binary example
    binary_prompt: torch.Tensor  # (B,) its prompt
    binary_target: torch.Tensor  # (B,) fp32 target in [0, 1]
    binary_weight: torch.Tensor  # (B,) fp32 loss weight (1 / the prompt's examples, or 1)
    pair_image_0: torch.Tensor  # (P,) first image of each ranking pair
    pair_image_1: torch.Tensor  # (P,) second image
    pair_prompt: torch.Tensor  # (P,) their prompt
    pair_label: torch.Tensor  # (P,) fp32 P(image 0 preferred): 1, 0 or 0.5 for a tie
    pair_weight: torch.Tensor  # (P,) fp32 loss weight
    aux_image: torch.Tensor  # (A,) image of each auxiliary example (labelled good)
    aux_prompt: torch.Tensor  # (A,) its true prompt
    aux_pool: torch.Tensor  # (A, K) perturbed prompts to draw from, -1 padding


@dataclass(frozen=True)
class FitResult:
    epoch_losses: list[float]  # mean training loss of each epoch
    best_epoch: int  # the epoch whose weights were kept (0: before training; the last without selection images)


def _tensors(split: Split, data: RewardData, per_prompt: bool, device) -> SplitTensors:
    def t(x, dtype=torch.long):
        return torch.as_tensor(np.array(x), dtype=dtype, device=device)

    b, p, a = split.binary, split.pairs, split.aux
    ones = lambda n: torch.ones(n, device=device)  # noqa: E731
    return SplitTensors(
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


class BestState:
    """Early stopping's keeper: the lowest loss offered so far (strictly lower replaces), its epoch
    and a copy of ``tensors`` as they were then; :meth:`restore` copies that state back."""

    def __init__(self, tensors) -> None:
        self.tensors = list(tensors)
        self.loss, self.epoch, self.state = float("inf"), -1, None

    def offer(self, loss: float, epoch: int) -> None:
        if loss < self.loss:
            self.loss, self.epoch, self.state = loss, epoch, [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def restore(self) -> None:
        if self.state is not None:
            for t, v in zip(self.tensors, self.state):
                t.copy_(v)


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor) -> float:
    """One step of a fit loop: gradients of ``loss``, the optimizer and its schedule; the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


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
        progress: bool = False, desc: str = "training") -> FitResult:
    """Train ``model.head`` (and ``backbone_params``) on ``data.train``, keeping the epoch with the
    lowest feedback loss on ``data.select``.

    Each step takes a slice of the binary examples, of the ranking pairs and of the auxiliary
    examples, sized so that one epoch passes over each once:
    loss = w_b * binary + w_r * Bradley-Terry + lambda * prompt classification.
    """
    lc, tc = cfg.loss, cfg.train
    device = model.device
    train = _tensors(data.train, data, lc.per_prompt_weighting, device)
    n_b = len(train.binary_image) if lc.binary != "none" else 0
    n_p = len(train.pair_image_0) if lc.ranking != "none" else 0
    n_a = len(train.aux_image) if aux_weight > 0 and train.aux_pool.shape[1] > 0 else 0
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
    select = _tensors(data.select, data, lc.per_prompt_weighting, device) if data.select is not None else None
    best = BestState([*model.head.parameters(), *(backbone_params or []), *model.head.buffers()])

    def checkpoint(epoch: int) -> None:
        if select is not None:
            best.offer(_feedback_loss(model, emb, select, lc), epoch)

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
                    chosen = _pick_perturbed(train.aux_pool[ia], lc.aux_num_prompts - 1, gen)
                    cand = torch.cat([train.aux_prompt[ia][:, None], chosen], dim=1)
                logits = _step_embeddings(model.head, emb, train, ib, ip, ia, cand)
                loss = torch.zeros((), device=device)
                if ib is not None:
                    loss = loss + lc.binary_weight * binary_loss(
                        logits("b"), train.binary_target[ib], train.binary_weight[ib], lc.binary)
                if ip is not None:
                    loss = loss + lc.ranking_weight * bradley_terry_loss(
                        logits("p0"), logits("p1"), train.pair_label[ip], train.pair_weight[ip])
                if cand is not None:
                    loss = loss + aux_weight * prompt_classification_loss(
                        logits("a"), cand >= 0, lc.aux_temperature)
                epoch_loss += optimizer_step(opt, sched, loss)
            history.append(epoch_loss / steps)
            checkpoint(_epoch + 1)
            model.train()
            if emb.cached:
                model.clip.eval()
            bar.set_postfix(loss=f"{history[-1]:.4f}", best_epoch=best.epoch)
        best.restore()
    model.eval()
    return FitResult(history, best.epoch if select is not None else tc.epochs)


@torch.no_grad()
def _feedback_loss(model: RewardModel, emb: Embeddings, split: SplitTensors, lc) -> float:
    """Binary + Bradley-Terry loss of the current model on a whole split (no auxiliary term:
    early stopping judges how well the model predicts feedback)."""
    was = model.training
    model.eval()
    n_b = len(split.binary_image) if lc.binary != "none" else 0
    n_p = len(split.pair_image_0) if lc.ranking != "none" else 0
    ib = torch.arange(n_b, device=split.binary_image.device) if n_b else None
    ip = torch.arange(n_p, device=split.pair_image_0.device) if n_p else None
    logits = _step_embeddings(model.head, emb, split, ib, ip, None, None)
    loss = 0.0
    if ib is not None:
        loss += lc.binary_weight * float(binary_loss(logits("b"), split.binary_target, split.binary_weight, lc.binary))
    if ip is not None:
        loss += lc.ranking_weight * float(bradley_terry_loss(logits("p0"), logits("p1"), split.pair_label, split.pair_weight))
    model.train(was)
    return loss


def _step_embeddings(head, emb: Embeddings, split: SplitTensors, ib, ip, ia, cand):
    """Returns ``logits(part)`` for part b (binary), p0 / p1 (pairs), a (auxiliary, (k, N)).

    Cached embeddings are indexed directly; live ones (trainable backbone) are computed once per
    distinct image and prompt of the step."""
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if ib is not None:
        rows["b"] = (split.binary_image[ib], split.binary_prompt[ib])
    if ip is not None:
        rows["p0"] = (split.pair_image_0[ip], split.pair_prompt[ip])
        rows["p1"] = (split.pair_image_1[ip], split.pair_prompt[ip])
    if cand is not None:
        k, n = cand.shape
        rows["a"] = (split.aux_image[ia][:, None].expand(k, n).reshape(-1), cand.clamp_min(0).reshape(-1))
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
