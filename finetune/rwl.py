"""Reward-weighted likelihood (Lee et al. 2023, "Aligning Text-to-Image Models using Human
Feedback", eq. 2):

    L(theta) = E_{(x,z) ~ D_model}[ -w(r(x, z)) log p_theta(x | z) ] + beta E_{(x,z) ~ D_pre}[ -log p_theta(x | z) ]

with -log p_theta replaced by the denoising loss l(x, z) = E_{t, eps} || f_theta(x_t, t, z) - target ||^2
(target = eps or v, the pipeline's prediction type; a flow-matching family's velocity target
eps - x0 at a noise level drawn as its training draws it, :mod:`finetune.flow_rwl`, AWM's loss).  Minimising w * l raises the likelihood of
well-rewarded images in proportion to their reward; the beta term on pre-training data keeps the
model close to its original distribution (Lee et al.'s guard against losing fidelity).

D_model: images the base model generates for the training prompts, scored once by the reward
model (and optionally images raters labelled good, weight 1).  D_pre: image-caption pairs, in the
shapes world renders with their true prompts, in general a dataset root's generations table.
Both are encoded to latents once and cached in the output folder.

The phases (as DPOK's, :mod:`finetune.dpok`): sample and score once, offline, as Lee et al. do
(:func:`build_model_set`), then every step :func:`_update` (one optimizer step of eq. 2 on a fresh
batch; the per-example loss, the family's :mod:`finetune.objective`, is TRL's ``calculate_loss``)
-> :func:`_after_step` (the step's row, logs, a checkpoint); after the last step, the sample grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from core import seeds
from core.errors import UserError
from core.images import pil_to_tensor
from data.labels import current
from data.store import Store
from finetune.checkpoints import save_result
from finetune.config import FinetuneConfig
from finetune.image_log import SampleGrid
from finetune.label_data import load_images
from finetune.prompts import shapes_pretrain_pairs
from finetune.region import latent_keep
from finetune.rl_math import reward_weights
from finetune.run import FinetuneResult, Run, micro_batches, setup_run
from finetune.denoiser import encode_images
from finetune.flow_rwl import FlowMatchingObjective
from finetune.objective import DenoisingObjective, training_objective
from finetune.sampler import decode_latents, sample_trajectories
from reward.reward_fn import Reward, RewardFn


@dataclass(frozen=True)
class StepStats:
    step: int
    loss: float
    loss_model: float  # reward-weighted denoising loss on D_model
    loss_pre: float  # denoising loss on D_pre
    mean_weight: float
    grad_norm: float
    lr: float
    loss_keep: float | None = None  # region.weight > 0: region-aware RWL's keep term on D_model


@dataclass
class LatentSet:
    """Encoded images with their prompts: latents (N, C, h, w), weights (N,); with region.weight > 0
    the latent cells region-aware RWL holds to the base model, keep (N, 1, h, w) bool."""

    latents: torch.Tensor
    prompts: list[str]
    weights: torch.Tensor
    rewards: torch.Tensor
    keep: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)


@torch.no_grad()
def build_model_set(run: Run) -> LatentSet:
    """D_model: samples of the (still unchanged) model for every training prompt, scored once."""
    cfg, r = run.cfg, run.cfg.rwl
    prompts = [p for p in run.prompts for _ in range(r.samples_per_prompt)]
    gen = torch.Generator(run.device).manual_seed(cfg.seed + seeds.FIXED_NOISE["rwl_model_set"])
    latents, rewards, keep = [], [], []
    sampler = run.sampling_policy()
    for i in tqdm(range(0, len(prompts), cfg.reward.batch_size), desc="rwl: sample D_model", unit="batch",
                  disable=not run.accelerator.is_main_process):
        chunk = prompts[i:i + cfg.reward.batch_size]
        cond, uncond = run.encode_prompts(chunk)
        traj = sample_trajectories(sampler, cond, uncond, run.latent_shape, gen, chunk)
        images = decode_latents(run.comps.pipe.vae, traj.final_latents)
        rewards.append(run.reward.score(images, chunk).float().cpu())
        latents.append(traj.final_latents.cpu())
        kept = run.keep_regions(images, chunk)
        if kept is not None:  # what each sample keeps, per latent cell
            keep.append(latent_keep(kept, tuple(run.latent_shape[-2:])).cpu())
    rewards_t = torch.cat(rewards)
    if not torch.isfinite(rewards_t).all():
        raise UserError("the reward model returned NaN or infinite rewards.",
                        "check the reward model folder (retrain it with `make reward`).")
    weights = reward_weights(rewards_t, r.weighting, r.temperature, r.threshold)
    model_set = LatentSet(torch.cat(latents), prompts, weights, rewards_t, torch.cat(keep) if keep else None)
    if r.include_labeled_good:
        model_set = _concat(model_set, _labeled_good(run))
    return model_set


def _concat(a: LatentSet, b: LatentSet) -> LatentSet:
    keep = None if a.keep is None else torch.cat([a.keep, torch.ones(len(b), *a.keep.shape[1:], dtype=torch.bool)])
    return LatentSet(torch.cat([a.latents, b.latents]), a.prompts + b.prompts,
                     torch.cat([a.weights, b.weights]), torch.cat([a.rewards, b.rewards]), keep)


def _load_generations(root: Path, keep: Callable | None, size: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """The images (N, 3, H, W) of a dataset root's generations (those ``keep(store)`` lists), which
    must all be ``size`` = (H, W) pixels, and their prompts."""
    store = Store(root)
    gens = store.to_pandas("generations")
    if keep is not None:
        gens = gens[gens["image_id"].isin(keep(store))]
    if gens.empty:
        raise UserError(f"no usable images in the dataset root {root}.",
                        "generate and label a round first (`make generate && make simulate-raters`).")
    return load_images(root, gens, size), gens["prompt"].tolist()


def _labeled_good(run: Run) -> LatentSet:
    """Images raters labelled good (by majority of non-skip labels), each with weight 1."""
    def good_ids(store):
        labels = current(store, "binary_labels").to_pandas()
        labels = labels[labels["label"] != "skip"]
        share = (labels["label"] == "good").groupby(labels["image_id"]).mean()
        return share[share > 0.5].index

    images, prompts = _load_generations(Path(run.cfg.rwl.dataset_root), good_ids, run.image_size)
    latents = encode_images(run.comps.pipe.vae, images).cpu()
    ones = torch.ones(len(prompts))
    return LatentSet(latents, prompts, ones, ones)


def build_pretrain_set(run: Run) -> LatentSet:
    """D_pre: shapes-world renders of the base model's training prompts with their true prompts, or
    the images and prompts of a dataset root's generations table.

    D_pre stands for the pre-training data (LAION in Lee et al.), so in the shapes world it is the
    base model's own training distribution, the train prompts, whatever prompts are fine-tuned: renders
    of the target prompts would hand RWL the right answers, and D_pre's job is to keep the rest of the
    model where it was (eq. 2's beta term)."""
    r, size = run.cfg.rwl, run.image_size
    if r.pretrain_source == "shapes":
        renders, prompts = shapes_pretrain_pairs(r.pretrain_per_prompt, run.cfg.seed, size[0])  # square: _check_inputs
        images = pil_to_tensor(renders)
    else:
        images, prompts = _load_generations(Path(r.pretrain_source), None, size)
    latents = encode_images(run.comps.pipe.vae, images).cpu()
    ones = torch.ones(len(prompts))
    return LatentSet(latents, prompts, ones, ones)


def _load_or_build(run: Run) -> tuple[LatentSet, LatentSet]:
    """Both datasets, cached in the output folder so a resumed run trains on the same data."""
    cache = run.out / "rwl_data.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=False)
        return LatentSet(**saved["model"]), LatentSet(**saved["pre"])
    model_set, pre_set = build_model_set(run), build_pretrain_set(run)
    if run.accelerator.is_main_process:
        tmp = cache.with_name(".rwl_data.pt.tmp")
        torch.save({"model": vars(model_set), "pre": vars(pre_set)}, tmp)
        tmp.replace(cache)
    return model_set, pre_set


def train_rwl(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None = None, progress: bool = True,
              on_step: Callable[[StepStats], None] | None = None) -> FinetuneResult:
    """Run reward-weighted likelihood fine-tuning as configured (see the module docstring)."""
    run, state = setup_run(cfg, reward_fn)
    cfg, r, acc = run.cfg, run.cfg.rwl, run.accelerator
    model_set, pre_set = _load_or_build(run)
    if float(model_set.weights.sum()) <= 0:
        raise UserError("every generated image has reward weight 0, so there is nothing to learn from.",
                        "lower rwl.threshold, use rwl.weighting=exp, or check the reward model.")
    objective = training_objective(run.comps.pipe)
    start, history = (state["step"], state["history"]) if state else (0, [])
    if start >= r.steps:
        raise UserError(f"{run.out} already finished {start} of rwl.steps={r.steps}.",
                        "raise rwl.steps to continue training, or pass resume=false.")
    run.init_trackers("rwl", start)
    grid = SampleGrid(run)
    bar = tqdm(range(start, r.steps), initial=start, total=r.steps, desc="rwl", unit="step",
               disable=not (progress and acc.is_main_process))
    # Draw only images that carry weight; region-aware RWL draws every image, since its keep term
    # holds all of D_model (an image of weight 0 too) to the base model.
    p_model = (model_set.weights > 0).float() if model_set.keep is None else torch.ones(len(model_set))
    p_model = p_model / p_model.sum()
    t_start = time.perf_counter()
    run.comps.unet.train()
    for step in bar:
        values = _update(run, step, objective, model_set, pre_set, p_model)
        row = _after_step(run, step + 1, values, history, region=model_set.keep is not None)
        bar.set_postfix(loss=f"{row.loss:.4f}", pre=f"{row.loss_pre:.4f}")
        if on_step is not None:
            on_step(row)
    if cfg.sample_grid_every:
        grid.log(r.steps, f"step-{r.steps:06d}")
    metrics = {"method": "rwl", "steps": r.steps, "final": history[-1], "history": history,
               "d_model": {"images": len(model_set), "reward_mean": float(model_set.rewards.mean()),
                           "mean_weight": float(model_set.weights.mean())},
               "d_pre": {"images": len(pre_set)}, "seconds": time.perf_counter() - t_start,
               "lineage": run.lineage}
    save_result(acc, run.comps, cfg, run.out, metrics)
    acc.end_training()
    return FinetuneResult(run.out, history, metrics)


def _update(run: Run, step: int, objective: DenoisingObjective | FlowMatchingObjective, model_set: LatentSet,
            pre_set: LatentSet, p_model: torch.Tensor) -> torch.Tensor:
    """One optimizer step of Lee et al. eq. 2 on a fresh batch: half of rwl.batch_size drawn from
    D_model (image i with probability ``p_model[i]``, weighted by its w), half from D_pre (its
    prompt dropped with probability rwl.pretrain_uncond), each half in micro-batches of
    ``compute.micro_batch`` UNet rows (:meth:`finetune.run.Run.gradient_step`).  Its examples,
    noise and timesteps come from generators seeded by (seed, step, process), so a resumed run
    draws what an uninterrupted one would.  Returns (6,) on the device: loss, loss_model,
    loss_pre, the mean weight, the gradient norm (0 on a step that only accumulates), loss_keep."""
    cfg, r, acc = run.cfg, run.cfg.rwl, run.accelerator
    seed = seeds.derived_seed(cfg.seed, seeds.Stream.RWL_STEP, step, acc.process_index)
    rng, gen = np.random.default_rng(seed), torch.Generator(run.device).manual_seed(seed)
    half = max(1, r.batch_size // 2)
    mi = rng.choice(len(model_set), size=half, p=p_model.numpy())
    pi = rng.choice(len(pre_set), size=half)
    model_noise = objective.draw(half, run.latent_shape, gen, run.device)
    pre_noise = objective.draw(half, run.latent_shape, gen, run.device)
    pre_prompts = ["" if rng.random() < r.pretrain_uncond else pre_set.prompts[i] for i in pi]
    w = model_set.weights[mi].to(run.device)
    guidance = cfg.sampling.guidance_scale if r.guided_loss else 1.0
    with acc.autocast():  # the batch's text embeddings at once; each part takes its rows
        model_text = run.encode_prompts([model_set.prompts[i] for i in mi])
        pre_text = run.encode_prompts(pre_prompts)

    def loss(job: tuple[str, slice]) -> tuple[torch.Tensor, tuple]:
        # each part's mean loss times its share of the half batch (D_pre's times beta): the parts'
        # gradients add up to the gradient of loss_model + beta * loss_pre (+ the keep term)
        kind, part = job
        share = (part.stop - part.start) / half
        with acc.autocast():
            if kind == "model":
                keep = None if model_set.keep is None else model_set.keep[mi[part]]
                lm, lk = objective.loss(run, model_set.latents[mi[part]], model_text[0][part], model_text[1][part],
                                        model_noise[0][part], model_noise[1][part], guidance, keep)
            else:
                lm, lk = objective.loss(run, pre_set.latents[pi[part]], pre_text[0][part], None,
                                        pre_noise[0][part], pre_noise[1][part])
        # Sampling images in proportion to 1[w > 0] and weighting by w keeps the
        # estimator of E_model[w l] unbiased up to the constant P(w > 0).
        part_loss = (w[part] * lm).mean() if kind == "model" else lm.mean()
        keep_part = lk.mean() if lk is not None else torch.zeros((), device=run.device)
        scaled = (part_loss + cfg.region.weight * keep_part) * share * (1.0 if kind == "model" else r.pretrain_weight)
        return scaled, (kind, part_loss.detach() * share, keep_part.detach() * share)

    jobs = ([("model", p) for p in micro_batches(half, cfg.items_per_pass(guidance > 1))]
            + [("pre", p) for p in micro_batches(half, cfg.items_per_pass(False))])
    reports, grad_norm = run.gradient_step(jobs, loss)
    sums = {"model": 0.0, "pre": 0.0, "keep": 0.0}
    for kind, part_loss, keep_part in reports:
        sums[kind] = sums[kind] + part_loss
        sums["keep"] = sums["keep"] + keep_part
    loss_model, loss_pre = sums["model"], sums["pre"]
    total = loss_model + r.pretrain_weight * loss_pre + cfg.region.weight * sums["keep"]
    if grad_norm is None:
        grad_norm = torch.zeros((), device=run.device)
    return torch.stack([total, loss_model, loss_pre, w.mean(), grad_norm.float(),
                        torch.as_tensor(sums["keep"], device=run.device)])


def _after_step(run: Run, done: int, values: torch.Tensor, history: list[dict], region: bool) -> StepStats:
    """After ``done`` steps: the step's row (``values`` from :func:`_update`; loss_keep only when
    ``region``, region-aware RWL) into ``history`` and the trackers, a checkpoint where due."""
    r = run.cfg.rwl
    values = values.tolist()  # the step's one wait for the device
    row = StepStats(done, *values[:4], values[4], float(run.lr_scheduler.get_last_lr()[0]),
                    values[5] if region else None)
    run.record_step(done, row, history, r.checkpoint_every_steps, r.steps)
    return row
