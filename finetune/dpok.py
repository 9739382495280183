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

A round is four phases, each one function (as TRL's ``step``; the loss of one minibatch of
transitions, :func:`_policy_loss`, is its ``calculate_loss``): :func:`_sample` the round's
trajectories -> :func:`_score` their images -> :func:`_update` the policy on them ->
:func:`_after_round` (the learning curve, the round's row, logs, the sample grid, a checkpoint).
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
from finetune.awm import awm_update
from finetune.checkpoints import save_checkpoint, save_result
from finetune.config import FinetuneConfig
from finetune.denoiser import TextCond
from finetune.image_log import SampleGrid, fixed_noise_images
from finetune.policy import DiffusionPolicy, base_policy
from finetune.prompts import prompt_group_ids
from finetune.region import outside_change
from finetune.rl_math import clipped_policy_loss, gaussian_log_prob, normalize_advantages, step_divergence
from finetune.run import FinetuneResult, Run, setup_run
from finetune.sampler import Trajectory, decode_latents, sample_trajectories
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
    # dpok.update=awm (finetune.awm): the mean matching loss l and the mean squared change of the
    # prediction from the base model's (kl, clip_fraction and approx_kl are then 0: no step log-probs)
    matching: float | None = None
    drift: float | None = None


@dataclass
class RoundSamples:
    """What a round samples (:func:`_sample`): B = prompts_per_process x samples_per_prompt images."""

    prompts: list[str]  # (B,): each drawn prompt samples_per_prompt times in a row
    cond: TextCond  # B rows: their text conditioning
    uncond: TextCond  # B rows: the empty prompt's, for guidance
    noise: torch.Tensor  # the generator state sampling started from: region-aware, the base model draws it too
    traj: Trajectory
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]


class LearningCurve:
    """``curve_every`` > 0: the share of the policy's samples of the training prompts (each
    ``curve_samples`` times, embedded once) that the shapes oracle judges aligned, measured
    before the first round and after every ``curve_every`` rounds and the last; ``points`` is
    metrics.json's ``curve``.  ``curve_every`` = 0: no points, nothing loaded."""

    def __init__(self, run: Run, points: list[dict]):
        self.run, self.points = run, points
        if run.cfg.curve_every:
            _check_curve_prompts(run.prompts)
            self.judge = load_reward(CURVE_JUDGE, run.device)
            self.texts = [p for p in run.prompts for _ in range(run.cfg.curve_samples)]
            self.cond, self.uncond = run.encode_prompts(self.texts)

    def due(self, rounds_done: int) -> bool:
        every = self.run.cfg.curve_every
        return bool(every) and (rounds_done % every == 0 or rounds_done == self.run.cfg.dpok.rounds)

    def measure(self, rounds_done: int) -> float:
        """Add the curve's point after ``rounds_done`` rounds (its image count too, for the
        standard error of evaluation.curves) and return the aligned share."""
        run = self.run
        aligned = curve_alignment(run.sampling_policy(), run.comps.pipe, self.judge, self.texts, self.cond,
                                  self.uncond, run.latent_shape, run.cfg)
        self.points.append({"round": rounds_done, "oracle_aligned": aligned, "images": len(self.texts)})
        return aligned


KL_ROUNDS = 5  # a run's KL from the base: the mean over its last this many rounds (one round is noisy)


def kl_from_base(history: list[dict]) -> float:
    """A run's KL from the base model: the per-step KL term to the base (DPOK eq. 7, nats per
    denoising step, on its own training prompts) averaged over its last KL_ROUNDS rounds; NaN
    before any round."""
    kls = [row["kl"] for row in history[-KL_ROUNDS:]]
    return float(np.mean(kls)) if kls else float("nan")


def _round_generator(cfg: FinetuneConfig, r: int, process: int, device) -> tuple[torch.Generator, np.random.Generator]:
    seed = seeds.derived_seed(cfg.seed, seeds.Stream.DPOK_ROUND, r, process)
    return torch.Generator(device).manual_seed(seed), np.random.default_rng(seed)


def train_dpok(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None = None, progress: bool = True,
               on_round: Callable[[RoundStats], None] | None = None) -> FinetuneResult:
    """Run DPOK as configured; ``reward_fn`` overrides ``cfg.reward``; ``on_round`` is called after
    every round (and checkpoint), e.g. to plot learning curves or stop early."""
    run, state = setup_run(cfg, reward_fn)
    cfg, d, accelerator = run.cfg, run.cfg.dpok, run.accelerator
    start, history = (state["round"], state["history"]) if state is not None else (0, [])
    if state is not None:
        accelerator.print(f"resuming {run.out} at round {start}")
    if start >= d.rounds:
        raise UserError(f"{run.out} already finished {start} of dpok.rounds={d.rounds}.",
                        "raise dpok.rounds to continue training, or pass resume=false.")
    run.init_trackers("dpok", start)
    grid = SampleGrid(run)
    curve = LearningCurve(run, state.get("curve", []) if state is not None else [])
    if cfg.curve_every and start == 0:
        curve.measure(0)
    bar = tqdm(range(start, d.rounds), initial=start, total=d.rounds, desc="dpok", unit="round",
               disable=not (progress and accelerator.is_main_process))
    t_start = time.perf_counter()
    for r in bar:
        gen, rng = _round_generator(cfg, r, accelerator.process_index, run.device)
        t0 = time.perf_counter()
        batch = _sample(run, gen, rng)
        t1 = time.perf_counter()
        rewards, outside = _score(run, batch)
        t2 = time.perf_counter()
        stats = _update(run, batch.traj, rewards, rng)
        t3 = time.perf_counter()
        row = _after_round(run, r + 1, rewards, outside, stats, (t1 - t0, t2 - t1, t3 - t2), history, curve, grid)
        bar.set_postfix(reward=f"{row.reward_mean:.3f}", kl=f"{row.kl:.4f}", clip=f"{row.clip_fraction:.2f}")
        if on_round is not None:
            on_round(row)
    metrics = {"method": "dpok", "rounds": d.rounds, "final": history[-1], "history": history,
               "curve": curve.points, "seconds": time.perf_counter() - t_start,
               "kl_from_base": kl_from_base(history), "lineage": run.lineage}
    save_result(accelerator, run.comps, cfg, run.out, metrics)
    accelerator.end_training()
    return FinetuneResult(run.out, history, metrics)


def _sample(run: Run, gen: torch.Generator, rng: np.random.Generator) -> RoundSamples:
    """Phase 1: the round's prompts (distinct where there are enough: a repeated prompt would merge
    into one per-prompt baseline group and cut the round's prompt diversity), each sampled
    ``samples_per_prompt`` times by the current policy (DDIM with eta > 0, or the flow SDE) through the trained window
    and the deterministic tail, and decoded."""
    cfg, d = run.cfg, run.cfg.dpok
    per_process = d.prompts_per_process(run.accelerator.num_processes)
    drawn = rng.choice(run.prompts, size=per_process, replace=per_process > len(run.prompts))
    prompts = [str(p) for p in drawn for _ in range(d.samples_per_prompt)]
    cond, uncond = run.encode_prompts(prompts)
    run.comps.unet.eval()
    noise = gen.get_state()
    traj = sample_trajectories(run.sampling_policy(), cond, uncond, run.latent_shape, gen, prompts,
                               cfg.dpok_window[1], d.tail_steps)
    return RoundSamples(prompts, cond, uncond, noise, traj, decode_latents(run.comps.pipe.vae, traj.final_latents))


def _score(run: Run, batch: RoundSamples) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Phase 2: the rewards (B,) of the round's images and, region-aware (``region.weight`` > 0),
    each image's change outside its problem region (B,), which the reward is charged for
    (Focus-N-Fix eq. 3: r(I) - beta * ||(1 - M) * (I0 - I)||); else None."""
    rewards = run.reward.score(batch.images, batch.prompts).to(run.device)
    if not torch.isfinite(rewards).all():
        raise UserError("the reward model returned NaN or infinite rewards.",
                        "check the reward model folder (retrain it with `make reward`).")
    if run.cfg.region.weight <= 0:
        return rewards, None
    outside = _outside_change(run, batch)
    return rewards - run.cfg.region.weight * outside, outside


@torch.no_grad()
def _outside_change(run: Run, batch: RoundSamples) -> torch.Tensor:
    """(B,) each image's change, from the base model's image of the same noise (the generator state
    the round's sampling started from), outside the problem region the reward's region model
    marks on that base image (:meth:`finetune.run.Run.keep_regions`)."""
    cfg = run.cfg
    gen = torch.Generator(run.device)
    gen.set_state(batch.noise)
    with base_policy(run.policy) as base:
        traj = sample_trajectories(base, batch.cond, batch.uncond, run.latent_shape, gen, batch.prompts,
                                   cfg.dpok_window[1], cfg.dpok.tail_steps)
    base_images = decode_latents(run.comps.pipe.vae, traj.final_latents)
    keep = run.keep_regions(base_images, batch.prompts).to(batch.images.device)
    return outside_change(batch.images, base_images, keep)


def _update(run: Run, traj: Trajectory, rewards: torch.Tensor, rng: np.random.Generator) -> dict:
    """Phase 3: the advantages (B, T), then (``dpok.update=awm``: :func:`finetune.awm.awm_update`
    instead) the round's clipped policy-gradient updates on a random draw of its transitions
    (:func:`draw_transitions`), ``minibatch_size`` transitions an optimizer step
    (:meth:`finetune.run.Run.minibatch_pass`).  Returns the round's mean of each minibatch's
    statistics and the mean gradient norm."""
    cfg, d = run.cfg, run.cfg.dpok
    adv = _advantages(traj, rewards, d).clamp(-d.advantage_clip, d.advantage_clip)
    if d.update == "awm":  # AWM's update on whole images: each sample's advantage, the same at every step
        return awm_update(run, traj, adv[:, 0], rng)
    run.comps.unet.train()
    start, end = cfg.dpok_window
    samples, steps = draw_transitions(rng, traj.batch_size, end, d.steps_per_sample, start)
    return run.minibatch_pass(len(steps), rng, ("kl", "clip_fraction", "approx_kl", "policy_loss", "loss"),
                              lambda items: _policy_loss(run.accelerator, run.policy, traj, adv, samples[items],
                                                         steps[items], d))


def _after_round(run: Run, done: int, rewards: torch.Tensor, outside: torch.Tensor | None, stats: dict,
                 seconds: tuple[float, float, float], history: list[dict], curve: LearningCurve,
                 grid: SampleGrid) -> RoundStats:
    """Phase 4, after ``done`` rounds: the learning curve's point where due, the round's row
    (rewards over every process; ``seconds`` of sampling, scoring and updating) into ``history``
    and the trackers, the sample grid, a checkpoint where due."""
    cfg, d, acc = run.cfg, run.cfg.dpok, run.accelerator
    aligned = curve.measure(done) if curve.due(done) else None
    all_rewards = acc.gather(rewards)
    row = RoundStats(
        round=done, reward_mean=float(all_rewards.mean()), reward_std=float(all_rewards.std(unbiased=False)),
        lr=float(run.lr_scheduler.get_last_lr()[0]),
        seconds_sample=seconds[0], seconds_reward=seconds[1], seconds_update=seconds[2], oracle_aligned=aligned,
        outside_change=None if outside is None else float(acc.gather(outside).mean()), **stats)
    history.append(asdict(row))
    if done % cfg.log_every == 0:
        acc.log({k: v for k, v in asdict(row).items() if k != "round" and v is not None}, step=done)
    if cfg.sample_grid_every and (done % cfg.sample_grid_every == 0 or done == d.rounds):
        grid.log(done, f"round-{done:04d}")
    if d.checkpoint_every_rounds and done % d.checkpoint_every_rounds == 0 and done < d.rounds:
        save_checkpoint(acc, run.out, done, run.checkpoint_state(round=done, history=history, curve=curve.points))
    return row


def _check_curve_prompts(prompts: list[str]) -> None:
    bad = OracleReward.unjudgeable(prompts)
    if bad is not None:
        raise UserError(f"curve_every needs shapes-world prompts (the oracle judges the curve); '{bad}' is not one.",
                        "set curve_every=0 for these prompts.")


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
