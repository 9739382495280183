"""Fine-tuning straight from the raters' labels, with no reward model: Diffusion-DPO on ranking
pairs (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization") and
Diffusion-KTO on binary answers (Li et al. 2024, "Aligning Diffusion Models by Optimizing Human
Utility").  Both are offline and supervised on the labelled images, like RWL (:mod:`finetune.rwl`),
and both stand the training error's drop from the frozen base's,

    g(x0, c) = e_ref(x0, c) - e_theta(x0, c),   e = mean over (C, h, w) of || prediction - target ||^2

at one noise draw, in for the log-likelihood ratio log p_theta(x0 | c) / p_ref(x0 | c) (the ELBO's
one-sample estimate, eq. 14's T omega(lambda_t) folded into beta).  The prediction and its target
are the family's (:mod:`finetune.objective`): SD's noise (or v) at a DDPM training timestep, a flow
family's velocity eps - x0 at a logit-normal noise level (Flow-DPO: the velocity error in place of
the noise error), unguided, as both papers train.  The reference is the frozen base: the LoRA
adapter disabled (:func:`finetune.policy.base_policy`, as DPOK's KL reference; ``init`` leaves it
the base, :mod:`finetune.lineage`).

- DPO (``dpo.*``): each pair's two images at ONE noise draw and timestep, the loss
  -log sigmoid(-beta / 2 ((e_w - e_l) - (e_ref_w - e_ref_l))) (:func:`finetune.rl_math.diffusion_dpo_loss`).
- KTO (``kto.*``): each image's utility sigmoid(+-beta (g - z_ref)) with the reference point z_ref the
  batch's mean g floored at 0 (:func:`finetune.rl_math.diffusion_kto_loss`, :func:`kto_reference_point`).

The phases: read and check the labels and their images (:func:`finetune.run.setup_run`, before
anything is written), encode the images once; then every step :func:`_update` (one optimizer step
on a fresh batch drawn by (seed, step, process), so a resumed run draws what an uninterrupted one
would) -> :func:`_after_step` (the step's row, logs, a checkpoint); after the last, the sample grid
and the LoRA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core import seeds
from core.errors import UserError
from finetune.checkpoints import save_result
from finetune.config import DPOConfig, FinetuneConfig, KTOConfig
from finetune.denoiser import TextCond, encode_images
from finetune.flow_rwl import FlowMatchingObjective
from finetune.image_log import SampleGrid
from finetune.objective import DenoisingObjective, training_objective
from finetune.policy import base_policy
from finetune.rl_math import diffusion_dpo_loss, diffusion_kto_loss, kto_reference_point
from finetune.run import FinetuneResult, Run, micro_batches, setup_run

Objective = DenoisingObjective | FlowMatchingObjective
NAMES = ("loss", "accuracy", "error", "ref_error", "reference_point")  # the terms _update reports


@dataclass(frozen=True)
class StepStats:
    step: int
    loss: float
    # DPO: the share of the batch's pairs with z > 0 (the model has moved towards the preferred image
    # more than the base: the implicit reward ranks the pair right); KTO: the share of images whose
    # margin beta (g - z_ref) has their verdict's sign
    accuracy: float
    error: float  # the trained model's mean training error e over the batch's images
    ref_error: float  # the frozen base's, at the same noise
    grad_norm: float
    lr: float
    reference_point: float | None = None  # KTO: z_ref of the step's batch (beta-free, in error units)


def train_on_labels(cfg: FinetuneConfig, progress: bool = True,
                    on_step: Callable[[StepStats], None] | None = None) -> FinetuneResult:
    """Run DPO (``method=dpo``) or KTO (``method=kto``) as configured (the module docstring)."""
    run, state = setup_run(cfg, None)
    cfg, acc, labels = run.cfg, run.accelerator, run.labels
    m: DPOConfig | KTOConfig = getattr(cfg, cfg.method)
    latents = encode_images(run.comps.pipe.vae, labels.pixels).cpu()  # (N, C, h, w), once
    objective = training_objective(run.comps.pipe)
    start, history = (state["step"], state["history"]) if state else (0, [])
    if start >= m.steps:
        raise UserError(f"{run.out} already finished {start} of {cfg.method}.steps={m.steps}.",
                        f"raise {cfg.method}.steps to continue training, or pass resume=false.")
    run.init_trackers(cfg.method, start)
    grid = SampleGrid(run)
    bar = tqdm(range(start, m.steps), initial=start, total=m.steps, desc=cfg.method, unit="step",
               disable=not (progress and acc.is_main_process))
    t_start = time.perf_counter()
    run.comps.unet.train()
    for step in bar:
        values = _update(run, step, objective, latents)
        row = _after_step(run, step + 1, values, history)
        bar.set_postfix(loss=f"{row.loss:.4f}", acc=f"{row.accuracy:.2f}")
        if on_step is not None:
            on_step(row)
    if cfg.sample_grid_every:
        grid.log(m.steps, f"step-{m.steps:06d}")
    metrics = {"method": cfg.method, "steps": m.steps, "final": history[-1], "history": history,
               "labels": labels.summary, "seconds": time.perf_counter() - t_start, "lineage": run.lineage}
    save_result(acc, run.comps, cfg, run.out, metrics)
    acc.end_training()
    return FinetuneResult(run.out, history, metrics)


def _errors(run: Run, objective: Objective, x0: torch.Tensor, cond: TextCond, noise: torch.Tensor,
            t: torch.Tensor, grad: bool = True, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(e_theta (B,), e_ref (B,)): the trained model's and the frozen base's training errors on the
    latents ``x0`` (B, C, h, w) at ``noise`` and timesteps / noise levels ``t`` (B,) (one draw of
    :meth:`draw`), unguided; e_ref without gradient (``ref``: already computed at these inputs, the
    base's pass skipped), e_theta with one when ``grad``."""
    acc = run.accelerator

    def error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)

    with acc.autocast():
        if ref is None:
            with torch.no_grad(), base_policy(run.policy) as base:
                ref = error(*objective.predict(run, base.unet, x0, cond, None, noise, t))
        with torch.set_grad_enabled(grad):
            err = error(*objective.predict(run, run.comps.unet, x0, cond, None, noise, t))
    return err, ref


def _update(run: Run, step: int, objective: Objective, latents: torch.Tensor) -> torch.Tensor:
    """One optimizer step of DPO or KTO on a fresh batch of ``{method}.batch_size`` examples drawn at
    random (without replacement when there are enough), in micro-batches of ``compute.micro_batch``
    denoiser rows (a DPO pair is 2 rows).  Returns (6,) on the device: the batch's loss, accuracy,
    mean e_theta, mean e_ref, z_ref (KTO; 0 for DPO) and the gradient norm (0 on a step that only
    accumulates)."""
    cfg, acc, labels = run.cfg, run.accelerator, run.labels
    dpo = cfg.method == "dpo"
    n = (cfg.dpo if dpo else cfg.kto).batch_size
    seed = seeds.derived_seed(cfg.seed, seeds.Stream.LABELS_STEP, step, acc.process_index)
    rng, gen = np.random.default_rng(seed), torch.Generator(run.device).manual_seed(seed)
    pick = rng.choice(len(labels), size=n, replace=n > len(labels))
    first = labels.first[pick]
    target = torch.as_tensor(labels.target[pick], device=run.device)
    noise, t = objective.draw(n, run.latent_shape, gen, run.device)  # DPO: one draw a pair, both images
    prompts = labels.image_prompts
    with acc.autocast():
        cond = run.encode_prompts([prompts[i] for i in first])[0]
    if dpo:
        parts = micro_batches(n, cfg.items_per_pass(guided=True))  # a pair is 2 rows, as a guided example
        loss = _dpo_loss(run, objective, latents, first, labels.second[pick], target, cond, noise, t)
    else:
        parts = micro_batches(n, cfg.items_per_pass(guided=False))
        loss = _kto_loss(run, objective, latents, first, target, cond, noise, t, parts)
    reports, grad_norm = run.gradient_step(parts, loss)
    total = torch.stack(reports).sum(0)
    if grad_norm is None:
        grad_norm = torch.zeros((), device=run.device)
    return torch.cat([total, grad_norm.float().reshape(1)])


def _dpo_loss(run: Run, objective: Objective, latents: torch.Tensor, w: np.ndarray, l: np.ndarray,
              target: torch.Tensor, cond: TextCond, noise: torch.Tensor, t: torch.Tensor) -> Callable:
    """The loss of a part (a slice of the batch's pairs) for :meth:`Run.gradient_step`: its mean DPO
    loss times its share of the batch, and its report (:data:`NAMES`, each times the share).  ``w`` /
    ``l``: the images of each pair (preferred first), ``target`` P(w preferred) (B,)."""
    n, beta = len(w), run.cfg.dpo.beta

    def loss(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        share = (part.stop - part.start) / n
        rows = np.concatenate([w[part], l[part]])  # [winners; losers], each at its pair's draw
        err, ref = _errors(run, objective, latents[rows], TextCond.cat([cond[part], cond[part]]),
                           torch.cat([noise[part], noise[part]]), torch.cat([t[part], t[part]]))
        (err_w, err_l), (ref_w, ref_l) = err.chunk(2), ref.chunk(2)
        per_pair, z = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta, target[part])
        mean = per_pair.mean()
        report = torch.stack([mean.detach(), (z > 0).float().mean(), err.detach().mean(), ref.mean(),
                              torch.zeros((), device=z.device)])
        return mean * share, report * share

    return loss


def _kto_loss(run: Run, objective: Objective, latents: torch.Tensor, images: np.ndarray, target: torch.Tensor,
              cond: TextCond, noise: torch.Tensor, t: torch.Tensor, parts: list[slice]) -> Callable:
    """The loss of a part (a slice of the batch's images) for :meth:`Run.gradient_step`, as
    :func:`_dpo_loss`'s.  The reference point z_ref is the WHOLE batch's (over every process, as the
    authors all-reduce it): with one part its own errors give it; cut into several, a first pass
    without gradient computes it (and each part's base errors, which the gradient pass then reuses), so
    ``compute.micro_batch`` changes how the step runs, not what."""
    k, n = run.cfg.kto, len(images)
    acc = run.accelerator
    z_ref, refs = None, {}
    if len(parts) > 1:
        errs = [_errors(run, objective, latents[images[p]], cond[p], noise[p], t[p], grad=False) for p in parts]
        z_ref = kto_reference_point(acc.gather(torch.cat([e for e, _ in errs])),
                                    acc.gather(torch.cat([r for _, r in errs])))
        refs = {p.start: r for p, (_, r) in zip(parts, errs)}  # the base's errors, by part

    def loss(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        share = (part.stop - part.start) / n
        err, ref = _errors(run, objective, latents[images[part]], cond[part], noise[part], t[part],
                           ref=refs.get(part.start))
        z = z_ref if z_ref is not None else kto_reference_point(acc.gather(err.detach()), acc.gather(ref))
        y = target[part]
        per_image, margin = diffusion_kto_loss(err, ref, y, k.beta, z, k.desirable_weight, k.undesirable_weight)
        mean = per_image.mean()
        right = ((margin > 0) == (y > 0.5)).float().mean()
        report = torch.stack([mean.detach(), right, err.detach().mean(), ref.mean(), z])
        return mean * share, report * share

    return loss


def _after_step(run: Run, done: int, values: torch.Tensor, history: list[dict]) -> StepStats:
    """After ``done`` steps: the step's row (``values`` from :func:`_update`) into ``history`` and the
    trackers, a checkpoint where due."""
    method = run.cfg.method
    m = getattr(run.cfg, method)
    values = values.tolist()  # the step's one wait for the device
    v = dict(zip(NAMES, values))
    row = StepStats(done, v["loss"], v["accuracy"], v["error"], v["ref_error"], values[-1],
                    float(run.lr_scheduler.get_last_lr()[0]), v["reference_point"] if method == "kto" else None)
    run.record_step(done, row, history, m.checkpoint_every_steps, m.steps)
    return row
