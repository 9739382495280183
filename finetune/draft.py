"""DRaFT-K (Clark et al. 2024; AlignProp, Prabhudesai et al. 2023, is the same family): fine-tune by
back-propagating a differentiable reward through the VAE decoder and the last K denoising steps.

Each step: draw ``draft.batch_size`` prompts and the chain's noise (x_T, and the per-step noise when
``sampling.eta`` > 0) -> run the first T - K steps of the DDIM chain without gradient -> the last K
steps with it, decode the latents with the VAE with it, score the images with the learned reward
with it -> ascend the reward:

    loss = -mean_b r(Î_b)                                      (DRaFT; KL-free, as the paper)

The gradient is truncated at x_{T-K} (DRaFT-K: the input of the last K steps is a constant), so the
memory is that of K UNet passes, the decoder and the reward, whatever T is.  With ``sampling.eta``
> 0 each step is x_{t-1} = mu_theta(x_t) + sigma_t eps_t with eps_t drawn once: the gradient flows
through the means (the reparameterised chain); at eta = 0, DRaFT's deterministic DDIM, through the
means alone.  ``draft.yaml`` ships eta = 0.

Region-aware (``region.weight`` = beta > 0) the objective is Focus-N-Fix's (Xing et al. 2025, eq. 3):

    r(Î) - beta * ||(1 - M(Î_0)) * (Î_0 - Î)|| / sqrt(3HW)

Î_0 the base model's image (the LoRA adapter off, no gradient) from the same x_T and per-step
noise, M its problem mask from the reward's region head (:meth:`finetune.run.Run.keep_regions`).
The penalty's gradient lands on exactly the pixels it protects, which DPOK's scalar penalty cannot do.

Early stopping: DRaFT's reward keeps rising while the images drift into what only the reward likes
(the paper's reward hacking), so a run stops at its step budget, ``draft.steps``, rather than at a
reward it reaches; the sample grids (``sample_grid_every`` steps) show the drift.

A step is four phases, as DPOK's round (:mod:`finetune.dpok`): :func:`_sample` the chain up to the
last K steps (and the base model's images, region-aware) -> :func:`_update`, one optimizer step on
the differentiable tail, decode and :func:`_score` in micro-batches -> :func:`_after_step` (the
step's row, logs, the sample grid, a checkpoint).  Every step draws its prompts and noise from
generators seeded by (seed, step, process), so a resumed run continues as if never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from core import seeds
from core.errors import UserError
from finetune.checkpoints import save_checkpoint, save_result
from finetune.config import FinetuneConfig
from finetune.denoiser import TextCond
from finetune.image_log import SampleGrid
from finetune.policy import base_policy
from finetune.region import outside_change
from finetune.run import FinetuneResult, Run, micro_batches, setup_run
from finetune.sampler import decode_differentiable, decode_latents, denoise
from reward.reward_fn import Reward, RewardFn


@dataclass(frozen=True)
class StepStats:
    step: int
    reward_mean: float  # the reward of the step's images, before the update
    reward_std: float
    objective: float  # the mean of what is maximised: the reward, region-aware minus beta x outside_change
    grad_norm: float | None  # before clipping; None on a step that only accumulates (optim.grad_accum)
    lr: float
    seconds_sample: float  # the chain without gradient (and the base model's images, region-aware)
    seconds_update: float  # the differentiable tail, decode, reward, backward and optimizer step
    outside_change: float | None = None  # region.weight > 0: mean change outside the problem regions (RMS)


@dataclass
class StepSamples:
    """What a step samples without gradient (:func:`_sample`), B = draft.batch_size images."""

    prompts: list[str]  # (B,)
    cond: TextCond  # their text embeddings (B rows)
    uncond: TextCond  # the empty prompt's, for guidance
    x: torch.Tensor  # (B, C, h, w) fp32 latents before step T - K, no graph: where the gradient stops
    noise: torch.Tensor | None  # (T, B, C, h, w) the per-step noise (sampling.eta > 0), None at eta 0
    base: torch.Tensor | None = None  # region-aware: (B, 3, H, W) the base model's images of the same noise
    keep: torch.Tensor | None = None  # region-aware: (B, H, W) bool, what the penalty protects


def check_draft_inputs(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None) -> None:
    """What DRaFT cannot train, refused before anything is written: a reward object without a
    gradient (a learned reward and a plain fn have one; ``reward.kind=oracle`` is refused when the
    config loads); a flow-matching base is refused with the family's other refusals
    (finetune.denoiser.check_finetune_options)."""
    if isinstance(reward_fn, Reward):
        reward_fn.require_differentiable()


def _step_generator(cfg: FinetuneConfig, s: int, process: int, device) -> tuple[torch.Generator, np.random.Generator]:
    seed = seeds.derived_seed(cfg.seed, seeds.Stream.DRAFT_STEP, s, process)
    return torch.Generator(device).manual_seed(seed), np.random.default_rng(seed)


def train_draft(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None = None, progress: bool = True,
                on_step: Callable[[StepStats], None] | None = None) -> FinetuneResult:
    """Run DRaFT-K as configured; ``reward_fn`` overrides ``cfg.reward`` (it must carry a gradient);
    ``on_step`` is called after every step (and checkpoint)."""
    check_draft_inputs(cfg, reward_fn)
    run, state = setup_run(cfg, reward_fn)
    cfg, d, accelerator = run.cfg, run.cfg.draft, run.accelerator
    start, history = (state["step"], state["history"]) if state is not None else (0, [])
    if state is not None:
        accelerator.print(f"resuming {run.out} at step {start}")
    if cfg.compute.gradient_checkpointing:  # the UNet's is set where it loads; the decoder's here
        run.comps.pipe.vae.enable_gradient_checkpointing()
    run.init_trackers("draft", start)
    grid = SampleGrid(run)
    bar = tqdm(range(start, d.steps), initial=start, total=d.steps, desc="draft", unit="step",
               disable=not (progress and accelerator.is_main_process))
    t_start = time.perf_counter()
    for s in bar:
        gen, rng = _step_generator(cfg, s, accelerator.process_index, run.device)
        t0 = time.perf_counter()
        batch = _sample(run, gen, rng)
        t1 = time.perf_counter()
        rewards, outside, objective, grad_norm = _update(run, batch)
        t2 = time.perf_counter()
        row = _after_step(run, s + 1, rewards, outside, objective, grad_norm, (t1 - t0, t2 - t1), history, grid)
        bar.set_postfix(reward=f"{row.reward_mean:.3f}")
        if on_step is not None:
            on_step(row)
    metrics = {"method": "draft", "steps": d.steps, "final": history[-1], "history": history,
               "seconds": time.perf_counter() - t_start, "lineage": run.lineage}
    save_result(accelerator, run.comps, cfg, run.out, metrics)
    accelerator.end_training()
    return FinetuneResult(run.out, history, metrics)


@torch.no_grad()
def _sample(run: Run, gen: torch.Generator, rng: np.random.Generator) -> StepSamples:
    """Phase 1: the step's prompts (distinct where there are enough), x_T and the per-step noise,
    the first T - K steps of the current policy's chain without gradient; region-aware, the base
    model's images of the same noise and what they keep."""
    cfg, d = run.cfg, run.cfg.draft
    drawn = rng.choice(run.prompts, size=d.batch_size, replace=d.batch_size > len(run.prompts))
    prompts = [str(p) for p in drawn]
    cond, uncond = run.encode_prompts(prompts)
    schedule, n = run.schedule, run.schedule.num_steps
    x = torch.randn((len(prompts), *run.latent_shape), generator=gen, device=run.device) * schedule.init_noise_sigma
    noise = (torch.randn((n, *x.shape), generator=gen, device=run.device) if schedule.eta > 0 else None)
    run.comps.unet.eval()
    batch = StepSamples(prompts, cond, uncond, denoise(run.sampling_policy(), x, 0, n - d.backprop_steps, cond,
                                                       uncond, noise), noise)
    if cfg.region.weight > 0:
        with base_policy(run.policy) as base:
            batch.base = decode_latents(run.comps.pipe.vae, denoise(base, x, 0, n, cond, uncond, noise))
        batch.keep = run.keep_regions(batch.base, prompts)
    return batch


def _score(run: Run, images: torch.Tensor, prompts: list[str], base: torch.Tensor | None,
           keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The objective (B,) of ``images`` (B, 3, H, W) with their graph, and its parts: the reward (B,)
    and, region-aware (``base`` and ``keep`` given), each image's change from the base's outside
    the problem region (B,) (Focus-N-Fix eq. 3: r(Î) - beta ||(1 - M) (Î_0 - Î)||); else None."""
    rewards = run.reward.differentiable_score(images, prompts).to(run.device)
    if not torch.isfinite(rewards.detach()).all():
        raise UserError("the reward model returned NaN or infinite rewards.",
                        "check the reward model folder (retrain it with `make reward`).")
    if base is None:
        return rewards, rewards, None
    outside = outside_change(images, base, keep.to(images.device))
    return rewards - run.cfg.region.weight * outside, rewards, outside


def _update(run: Run, batch: StepSamples) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                  torch.Tensor | None]:
    """Phase 2: one optimizer step (:meth:`finetune.run.Run.gradient_step`) on -mean objective,
    in micro-batches of ``compute.micro_batch`` UNet rows: each runs the last K steps of its images'
    chain from x_{T-K} with gradient, decodes and scores them (:func:`_score`) and back-propagates.
    Returns the images' rewards (B,), outside changes (B,) or None, objectives (B,), all detached,
    and the gradient norm."""
    cfg, d = run.cfg, run.cfg.draft
    n, b = run.schedule.num_steps, len(batch.prompts)
    run.comps.unet.train()

    def loss(part: slice) -> tuple[torch.Tensor, tuple]:
        noise = None if batch.noise is None else batch.noise[:, part]
        with run.accelerator.autocast():
            x0 = denoise(run.policy, batch.x[part], n - d.backprop_steps, n, batch.cond[part], batch.uncond[part],
                         noise)
            images = decode_differentiable(run.comps.pipe.vae, x0)
        objective, rewards, outside = _score(run, images, batch.prompts[part],
                                             None if batch.base is None else batch.base[part],
                                             None if batch.keep is None else batch.keep[part])
        share = (part.stop - part.start) / b  # each part's mean weighted by its share: the batch's mean
        return -objective.mean() * share, (rewards.detach(), None if outside is None else outside.detach(),
                                          objective.detach())

    parts = micro_batches(b, cfg.items_per_pass(run.policy.guidance_scale != 1.0))
    reports, norm = run.gradient_step(parts, loss)
    rewards, outside, objective = zip(*reports)
    return (torch.cat(rewards), None if outside[0] is None else torch.cat(outside), torch.cat(objective), norm)


def _after_step(run: Run, done: int, rewards: torch.Tensor, outside: torch.Tensor | None, objective: torch.Tensor,
                grad_norm: torch.Tensor | None, seconds: tuple[float, float], history: list[dict],
                grid: SampleGrid) -> StepStats:
    """Phase 3, after ``done`` steps: the step's row (over every process; ``seconds`` of sampling and
    updating) into ``history`` and the trackers, the sample grid, a checkpoint where due."""
    cfg, d, acc = run.cfg, run.cfg.draft, run.accelerator
    all_rewards = acc.gather(rewards)
    row = StepStats(
        step=done, reward_mean=float(all_rewards.mean()), reward_std=float(all_rewards.std(unbiased=False)),
        objective=float(acc.gather(objective).mean()), grad_norm=None if grad_norm is None else float(grad_norm),
        lr=float(run.lr_scheduler.get_last_lr()[0]), seconds_sample=seconds[0], seconds_update=seconds[1],
        outside_change=None if outside is None else float(acc.gather(outside).mean()))
    history.append(asdict(row))
    if done % cfg.log_every == 0:
        acc.log({k: v for k, v in asdict(row).items() if k != "step" and v is not None}, step=done)
    if cfg.sample_grid_every and (done % cfg.sample_grid_every == 0 or done == d.steps):
        grid.log(done, f"step-{done:04d}")
    if d.checkpoint_every_steps and done % d.checkpoint_every_steps == 0 and done < d.steps:
        save_checkpoint(acc, run.out, done, run.checkpoint_state(step=done, history=history))
    return row
