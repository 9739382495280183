"""DPOK (Fan et al. 2023): online policy gradient over the denoising steps, KL-regularised to the
pre-trained model.

Each round: sample trajectories from the current policy (DDIM, eta > 0) -> decode and score them
with the reward model -> advantages -> clipped policy-gradient updates on a random subset of the
denoising steps (a window of them, ``dpok.window`` = [start, end), see
:func:`draw_transitions`; the rest of the chain optionally a short deterministic tail,
``tail_steps``, see :func:`finetune.sampler.deterministic_tail`), with beta * KL(p_theta || p_base)
per step (DPOK eq. 7-8):

    loss = alpha * PPO_clip(r_t(theta), A) + beta * KL_t,   r_t = p_theta(x_{t-1}|x_t) / p_old(x_{t-1}|x_t)

KL_t is the exact Gaussian KL ||mu_theta - mu_base||^2 / 2 sigma_t^2 of the two step Gaussians (as
Flow-GRPO; DPOK's own code uses an eps-MSE surrogate).  The base model is the same UNet with its
LoRA adapter disabled (or a frozen copy when the whole UNet is trained).

Advantages: rewards minus the prompt's mean (``per_prompt``, as DDPO and GRPO) or minus the batch
mean (``batch``); either is divided
by the batch's reward std (``per_prompt`` with ``advantage_scale=group``: by each prompt group's, as
DDPO) so that alpha and the clip range mean the same for any reward scale.
Every round draws its prompts, noise and step subsets from generators seeded by (seed, round,
process), so a run resumed from a checkpoint continues exactly as if never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from core import seeds
from core.errors import UserError
from finetune.checkpoints import save_checkpoint, save_result
from finetune.components import Components
from finetune.config import FinetuneConfig
from finetune.image_log import log_images
from finetune.policy import DiffusionPolicy, base_policy
from finetune.prompts import grid_prompts, prompt_group_ids
from finetune.region import outside_change
from finetune.rl_math import clipped_policy_loss, gaussian_log_prob, normalize_advantages, step_divergence
from finetune.run import FinetuneResult, backward_contexts, micro_batches, setup_run
from finetune.sampler import Trajectory, decode_latents, encode_prompts, sample_trajectories
from reward.reward_fn import OracleReward, Reward, RewardFn, RewardSource, load_reward

# The learning curve's judge, through the reward source interface: 1 for an image the shapes
# oracle judges aligned with its prompt, else 0.
CURVE_JUDGE = RewardSource(kind="oracle", oracle="aligned")


@dataclass(frozen=True)
class RoundStats:
    round: int
    reward_mean: float
    reward_std: float
    kl: float  # mean per-step KL term (nats)
    clip_fraction: float
    approx_kl: float  # KL(old || new) estimate of the update
    policy_loss: float
    loss: float
    grad_norm: float
    lr: float
    seconds_sample: float
    seconds_reward: float
    seconds_update: float
    oracle_aligned: float | None = None  # cfg.curve_every: share judged aligned after this round
    outside_change: float | None = None  # region.weight > 0: mean change outside the problem regions (RMS)


def _round_generator(cfg: FinetuneConfig, r: int, process: int, device) -> tuple[torch.Generator, np.random.Generator]:
    seed = seeds.derived_seed(cfg.seed, seeds.Stream.DPOK_ROUND, r, process)
    return torch.Generator(device).manual_seed(seed), np.random.default_rng(seed)


def train_dpok(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None = None, progress: bool = True,
               on_round: Callable[[RoundStats], None] | None = None) -> FinetuneResult:
    """Run DPOK as configured; ``reward_fn`` overrides ``cfg.reward``; ``on_round`` is called after
    every round (and checkpoint), e.g. to plot learning curves or stop early."""
    run, state = setup_run(cfg, reward_fn)
    cfg, out, accelerator, device = run.cfg, run.out, run.accelerator, run.device
    d, comps, pipe, policy = cfg.dpok, run.comps, run.comps.pipe, run.policy
    unet, lr_sched = comps.unet, run.lr_scheduler
    start, history = 0, []
    if state is not None:
        start, history = state["round"], state["history"]
        accelerator.print(f"resuming {out} at round {start}")
    if start >= d.rounds:
        raise UserError(f"{out} already finished {start} of dpok.rounds={d.rounds}.",
                        "raise dpok.rounds to continue training, or pass resume=false.")

    run.init_trackers("dpok", start)
    grid = grid_prompts(cfg)  # the sample grids' prompts, read once
    eval_cond, eval_uncond = encode_prompts(pipe, grid, device)
    curve = state.get("curve", []) if state is not None else []
    if cfg.curve_every:
        _check_curve_prompts(run.prompts)
        curve_judge = load_reward(CURVE_JUDGE, device)
        curve_texts = [p for p in run.prompts for _ in range(cfg.curve_samples)]
        curve_cond, curve_uncond = encode_prompts(pipe, curve_texts, device)

        def measure_curve(after_round: int) -> float:
            """Add the curve's point after ``after_round`` rounds (its image count too, for the
            standard error of evaluation.curves) and return the aligned share."""
            aligned = curve_alignment(run.sampling_policy(), pipe, curve_judge, curve_texts, curve_cond,
                                      curve_uncond, run.latent_shape, cfg)
            curve.append({"round": after_round, "oracle_aligned": aligned, "images": len(curve_texts)})
            return aligned

        if start == 0:
            measure_curve(0)
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    per_process = d.prompts_per_process(n_proc)
    bar = tqdm(range(start, d.rounds), initial=start, total=d.rounds, desc="dpok", unit="round",
               disable=not (progress and accelerator.is_main_process))
    t_start = time.perf_counter()
    for r in bar:
        gen, rng = _round_generator(cfg, r, rank, device)
        # -- sample -----------------------------------------------------------------------
        t0 = time.perf_counter()
        # Distinct prompts per round where there are enough: a repeated prompt would merge into
        # one per-prompt baseline group and cut the round's prompt diversity.
        drawn = rng.choice(run.prompts, size=per_process, replace=per_process > len(run.prompts))
        round_prompts = [str(p) for p in drawn for _ in range(d.samples_per_prompt)]
        cond, uncond = encode_prompts(pipe, round_prompts, device)
        unet.eval()
        noise = gen.get_state()  # region-aware: the base model's image draws this same noise
        traj = sample_trajectories(run.sampling_policy(), cond, uncond, run.latent_shape, gen, round_prompts,
                                   cfg.dpok_window[1], d.tail_steps)
        images = decode_latents(pipe.vae, traj.final_latents)
        t1 = time.perf_counter()
        rewards = run.reward.score(images, round_prompts).to(device)
        if not torch.isfinite(rewards).all():
            raise UserError("the reward model returned NaN or infinite rewards.",
                            "check the reward model folder (retrain it with `make reward`).")
        outside = None
        if cfg.region.weight > 0:  # Focus-N-Fix eq. 3: r(I) - beta * ||(1 - M) * (I0 - I)||
            outside = _outside_change(run, noise, cond, uncond, round_prompts, images)
            rewards = rewards - cfg.region.weight * outside
        t2 = time.perf_counter()
        # -- advantages (B, T) --------------------------------------------------------------
        adv = _advantages(traj, rewards, d)
        adv = adv.clamp(-d.advantage_clip, d.advantage_clip)
        # -- update -------------------------------------------------------------------------
        unet.train()
        stats = _update(accelerator, policy, comps, run.optimizer_step, traj, adv, cfg, rng)
        t3 = time.perf_counter()
        aligned = None
        if cfg.curve_every and ((r + 1) % cfg.curve_every == 0 or r + 1 == d.rounds):
            aligned = measure_curve(r + 1)
        all_rewards = accelerator.gather(rewards)
        row = RoundStats(
            round=r + 1, reward_mean=float(all_rewards.mean()), reward_std=float(all_rewards.std(unbiased=False)),
            lr=float(lr_sched.get_last_lr()[0]),
            seconds_sample=t1 - t0, seconds_reward=t2 - t1, seconds_update=t3 - t2, oracle_aligned=aligned,
            outside_change=None if outside is None else float(accelerator.gather(outside).mean()), **stats)
        history.append(asdict(row))
        if (r + 1) % cfg.log_every == 0:
            accelerator.log({k: v for k, v in asdict(row).items() if k != "round" and v is not None}, step=r + 1)
        bar.set_postfix(reward=f"{row.reward_mean:.3f}", kl=f"{row.kl:.4f}", clip=f"{row.clip_fraction:.2f}")
        if cfg.sample_grid_every and ((r + 1) % cfg.sample_grid_every == 0 or r + 1 == d.rounds):
            _sample_grid(accelerator, run.sampling_policy(), pipe, grid, eval_cond, eval_uncond, run.latent_shape, cfg,
                         out, r + 1)
        if d.checkpoint_every_rounds and (r + 1) % d.checkpoint_every_rounds == 0 and r + 1 < d.rounds:
            save_checkpoint(accelerator, out, r + 1, run.checkpoint_state(
                round=r + 1, history=history, curve=curve))
        if on_round is not None:
            on_round(row)
    metrics = {"method": "dpok", "rounds": d.rounds, "final": history[-1], "history": history,
               "curve": curve, "seconds": time.perf_counter() - t_start,
               "lineage": run.lineage}
    save_result(accelerator, comps, cfg, out, metrics)
    accelerator.end_training()
    return FinetuneResult(out, history, metrics)


@torch.no_grad()
def _outside_change(run, noise: torch.Tensor, cond, uncond, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """(B,) each image's change, from the base model's image of the same noise (the generator state
    ``noise`` the round's sampling started from), outside the problem region the reward's region
    model marks on that base image (:meth:`finetune.run.Run.keep_regions`)."""
    cfg = run.cfg
    gen = torch.Generator(run.device)
    gen.set_state(noise)
    with base_policy(run.policy) as base:
        traj = sample_trajectories(base, cond, uncond, run.latent_shape, gen, prompts, cfg.dpok_window[1],
                                   cfg.dpok.tail_steps)
    base_images = decode_latents(run.comps.pipe.vae, traj.final_latents)
    return outside_change(images, base_images, run.keep_regions(base_images, prompts).to(images.device))


def _check_curve_prompts(prompts: list[str]) -> None:
    bad = OracleReward.unjudgeable(prompts)
    if bad is not None:
        raise UserError(f"curve_every needs shapes-world prompts (the oracle judges the curve); '{bad}' is not one.",
                        "set curve_every=0 for these prompts.")


@torch.no_grad()
def fixed_noise_images(policy: DiffusionPolicy, pipe, cond, uncond, latent_shape, seed: int,
                       prompts: list[str]) -> torch.Tensor:
    """The current policy's images (B, 3, H, W) in [0, 1] of ``prompts`` (their embeddings ``cond`` /
    ``uncond``) from the noise of a generator seeded with ``seed``: the same noise every call, so
    the results compare across rounds.  The UNet's train/eval mode is left as it was."""
    was_training = policy.unet.training
    policy.unet.eval()
    traj = sample_trajectories(policy, cond, uncond, latent_shape, torch.Generator(cond.device).manual_seed(seed),
                               prompts)
    policy.unet.train(was_training)
    return decode_latents(pipe.vae, traj.final_latents)


def curve_alignment(policy: DiffusionPolicy, pipe, judge: Reward, texts: list[str], cond, uncond, latent_shape,
                    cfg: FinetuneConfig) -> float:
    """Share of the current policy's samples of ``texts`` (each training prompt x
    ``cfg.curve_samples``, embedded once as ``cond`` / ``uncond``) that ``judge`` (1: aligned, 0:
    not; :data:`CURVE_JUDGE`) passes, from a generator seeded apart from the rounds'."""
    images = fixed_noise_images(policy, pipe, cond, uncond, latent_shape, cfg.seed + seeds.FIXED_NOISE["curve"], texts)
    return float(np.mean(judge.score(images, texts).cpu().numpy() == 1))


def _advantages(traj: Trajectory, rewards: torch.Tensor, d) -> torch.Tensor:
    """Advantages (B, T): each sample's (B,) the same for every recorded step of its trajectory."""
    b, t = traj.batch_size, traj.num_steps
    if d.baseline == "per_prompt":
        groups = prompt_group_ids(traj.prompts).to(rewards.device)
        return normalize_advantages(rewards, groups, d.advantage_scale)[:, None].expand(b, t)
    return normalize_advantages(rewards)[:, None].expand(b, t)


def draw_transitions(rng: np.random.Generator, batch: int, eligible: int, per_sample: int, start: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The transitions one round trains on: ``per_sample`` distinct step indices per trajectory
    (DDPO's timestep fraction), drawn from steps ``start`` .. ``eligible`` - 1 (index 0 is the
    noisiest).

    Returns (sample index, step index), each (batch * per_sample,).  Why a window of steps: the
    policy gradient of a step is A * (x_{t-1} - mu) / sigma_t^2 * dmu/dtheta, and only the noise of
    the steps that decide the image is correlated with A; any other step's term is nearly pure
    noise.  A late step's noise moves the final image by a few pixels, and its small sigma_t makes
    the PPO ratio swing and clip.  Which steps decide: ``make probe-steps`` (:mod:`tools.probe`;
    what it found on the shapes model: experiments/probe).
    """
    steps = np.stack([start + rng.choice(eligible - start, size=per_sample, replace=False) for _ in range(batch)])
    return np.repeat(np.arange(batch), per_sample), steps.reshape(-1)


def _update(accelerator, policy: DiffusionPolicy, comps: Components, optimizer_step: Callable[[], None],
            traj: Trajectory, adv: torch.Tensor, cfg: FinetuneConfig, rng) -> dict:
    """One round's clipped policy-gradient updates; ``optimizer_step``: :meth:`finetune.run.Run.optimizer_step`.

    Each minibatch runs in micro-batches of ``compute.micro_batch`` UNet rows whose losses,
    scaled by their share of the minibatch, are back-propagated in turn: the gradients add up to
    the minibatch's.  The statistics stay on the device (float64 sums) until the round ends, so
    the loop never waits for the GPU."""
    d = cfg.dpok
    start, end = cfg.dpok_window
    samples, steps = draw_transitions(rng, traj.batch_size, end, d.steps_per_sample, start)
    names = ("kl", "clip_fraction", "approx_kl", "policy_loss", "loss")
    device = traj.latents.device
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    grad_norm = torch.zeros((), dtype=torch.float64, device=device)
    n_mb = n_opt = 0
    order = rng.permutation(len(steps))
    for start in range(0, len(order), d.minibatch_size):
        sel = order[start:start + d.minibatch_size]
        with accelerator.accumulate(policy.unet):
            stats = torch.zeros(len(names), dtype=torch.float64, device=device)
            parts = micro_batches(len(sel), cfg.items_per_pass(policy.guidance_scale != 1.0))
            for part, sync in zip(parts, backward_contexts(accelerator, policy.unet, len(parts))):
                share = (part.stop - part.start) / len(sel)
                with sync:
                    terms = _policy_loss(accelerator, policy, traj, adv, samples[sel[part]], steps[sel[part]], d)
                    accelerator.backward(terms[-1] * share)
                stats += torch.stack([t.detach().double() for t in terms]) * share
            if accelerator.sync_gradients:
                grad_norm += accelerator.clip_grad_norm_(comps.trainable, cfg.optim.max_grad_norm).double()
                n_opt += 1
            optimizer_step()
        sums += stats
        n_mb += 1
    means = (sums / max(1, n_mb)).tolist()  # the round's one wait for the device
    out = dict(zip(names, means))
    out["grad_norm"] = float(grad_norm) / max(1, n_opt)
    return out


def _policy_loss(accelerator, policy: DiffusionPolicy, traj: Trajectory, adv: torch.Tensor, samples: np.ndarray,
                 steps: np.ndarray, d) -> tuple[torch.Tensor, ...]:
    """DPOK eq. 7-8 on the transitions (samples[i], steps[i]): the mean KL term, clip fraction,
    approximate KL, policy loss and total loss alpha * PPO_clip + beta * KL, each a scalar."""
    bi = torch.as_tensor(samples, device=traj.latents.device)
    si = torch.as_tensor(steps, device=traj.latents.device)
    x_t, x_prev = traj.latents[bi, si], traj.latents[bi, si + 1]
    cond, uncond = traj.prompt_embeds[bi], traj.negative_embeds[bi]
    # a side network: the backbone's outputs recorded while sampling, rows [uncond; cond] (K n, C, H, W)
    pre = None if traj.eps_pre is None else traj.eps_pre[bi, si].transpose(0, 1).flatten(0, 1)
    with accelerator.autocast():
        step = policy.step(x_t, si, cond, uncond, pre)
        ref = policy.reference_step(x_t, si, cond, uncond, pre)
    g = step.gaussian
    log_prob = gaussian_log_prob(x_prev, g.mean, g.std)
    pl = clipped_policy_loss(log_prob, traj.log_probs[bi, si], adv[bi, si], d.clip_range)
    kl = step_divergence(g.mean, ref.gaussian.mean, g.std, d.divergence)
    loss = d.reward_weight * pl.loss + d.kl_weight * kl.mean()
    return kl.mean(), pl.clip_fraction, pl.approx_kl, pl.loss, loss


@torch.no_grad()
def _sample_grid(accelerator, policy, pipe, prompts: list[str], cond, uncond, latent_shape, cfg, out: Path,
                 r: int) -> None:
    """The grid ``prompts`` (``cond`` / ``uncond`` their embeddings) with fixed noise: the same seeds
    every time, so grids compare across rounds."""
    images = fixed_noise_images(policy, pipe, cond, uncond, latent_shape, cfg.seed + seeds.FIXED_NOISE["grid"],
                                prompts)
    log_images(accelerator, "samples/eval_prompts", images, r, out / "samples" / f"round-{r:04d}.png",
               ncols=len(prompts))
