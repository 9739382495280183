"""Sampling trajectories with per-step log-probs from a pipeline of any fine-tunable family (the
family's parts: :mod:`finetune.denoiser`; its text encoding and latent decoding are re-exported
here for the callers that sample)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.denoiser import TextCond, decode_differentiable, decode_latents, encode_prompts
from finetune.policy import DiffusionPolicy
from finetune.rl_math import gaussian_log_prob

__all__ = ["Trajectory", "continue_chain", "decode_differentiable", "decode_latents", "denoise", "deterministic_tail",
           "encode_prompts", "sample_trajectories", "tail_indices"]


@dataclass
class Trajectory:
    """A batch of denoising trajectories (one per prompt) under the policy.

    Shapes: B samples, T recorded (stochastic) steps, latents (C, H, W) (FLUX's unpacked, C = 16).
    T is every step of the schedule, or its first ``stochastic_steps`` when the rest of the chain
    was a deterministic tail (:func:`sample_trajectories`).
    """

    latents: torch.Tensor  # (B, T + 1, C, H, W) fp32: x_T, ... (the state before each recorded step, and after the last)
    log_probs: torch.Tensor  # (B, T) fp32: log p(x_{t-1} | x_t) under the sampling policy
    prompt_embeds: TextCond  # B rows
    negative_embeds: TextCond  # B rows: the empty prompt, for guidance
    prompts: list[str]
    tail_latents: torch.Tensor | None = None  # (B, C, H, W): x_0 of a deterministic tail, else None
    # a side-network policy (core.side): the frozen backbone's outputs at each recorded step,
    # (B, T, K, C, H, W), K = 2 ([uncond, cond]) under guidance, else 1; None for any other policy.
    # DPOK's update reuses them: its side network runs alone, and they are its KL reference.
    eps_pre: torch.Tensor | None = None

    @property
    def final_latents(self) -> torch.Tensor:
        """x_0 (B, C, H, W): the end of the recorded chain, or of its deterministic tail."""
        return self.latents[:, -1] if self.tail_latents is None else self.tail_latents

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]


@torch.no_grad()
def sample_trajectories(policy: DiffusionPolicy, cond: TextCond, uncond: TextCond,
                        latent_shape: tuple[int, int, int], generator: torch.Generator,
                        prompts: list[str], stochastic_steps: int | None = None, tail_steps: int = 0) -> Trajectory:
    """Run the stochastic chain (DDIM, or the flow SDE) from x_T ~ N(0, I), recording latents and fp32
    log-probs of each step.

    With ``tail_steps`` > 0 only the first ``stochastic_steps`` steps are sampled and recorded;
    the rest of the chain is finished by a deterministic DDIM tail of ``tail_steps`` UNet calls
    (:func:`deterministic_tail`), whose x_0 only feeds the reward.
    ``generator`` lives on the latents' device and makes the whole batch reproducible.
    """
    schedule, b = policy.schedule, len(cond)
    recorded = schedule.num_steps if not tail_steps else stochastic_steps
    x = torch.randn((b, *latent_shape), generator=generator, device=cond.device) * schedule.init_noise_sigma
    eps_pre: list[torch.Tensor] = []
    latents, log_probs = continue_chain(policy, x, 0, recorded, cond, uncond, generator, eps_pre)
    tail = deterministic_tail(policy, latents[:, -1], recorded, tail_steps, cond, uncond) if tail_steps else None
    pre = torch.stack([e.unflatten(0, (-1, b)).transpose(0, 1) for e in eps_pre], 1) if eps_pre else None
    return Trajectory(latents, log_probs, cond, uncond, list(prompts), tail, pre)


@torch.no_grad()
def continue_chain(policy: DiffusionPolicy, x: torch.Tensor, start: int, stop: int, cond: TextCond,
                   uncond: TextCond, generator: torch.Generator, eps_pre: list | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps ``start`` .. ``stop`` - 1 of the stochastic chain from the latents ``x`` (B, C, H, W)
    before step ``start``: latents (B, stop - start + 1, C, H, W), ``x`` first, and the fp32
    log-prob of each step (B, stop - start).  ``eps_pre``: a list that collects a side network's
    backbone outputs of each step (:attr:`finetune.policy.PolicyStep.eps_pre`)."""
    latents, log_probs = [x], []
    for i in range(start, stop):
        index = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        step = policy.step(x, index, cond, uncond)
        g = step.gaussian
        if eps_pre is not None and step.eps_pre is not None:
            eps_pre.append(step.eps_pre.float())
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x = g.mean + g.std * noise
        log_probs.append(gaussian_log_prob(x, g.mean, g.std))
        latents.append(x)
    empty = torch.zeros((x.shape[0], 0), device=x.device)
    return torch.stack(latents, 1), torch.stack(log_probs, 1) if log_probs else empty


def tail_indices(start: int, num_steps: int, tail_steps: int) -> list[int]:
    """The schedule step indices a deterministic tail of ``tail_steps`` UNet calls evaluates, from
    ``start`` to the end of a ``num_steps`` chain, evenly spaced: e.g. 8, 11, 14, 17 for (8, 20, 4)."""
    return [int(i) for i in np.linspace(start, num_steps, tail_steps + 1).round()[:-1]]


@torch.no_grad()
def deterministic_tail(policy: DiffusionPolicy, x: torch.Tensor, start: int, tail_steps: int,
                       cond: TextCond, uncond: TextCond) -> torch.Tensor:
    """x_0 (B, C, H, W) from the latents ``x`` before step ``start``: the schedule's deterministic step
    (:meth:`ode_step`; a flow family: the ODE's Euler step), for SD DDIM with eta = 0 (DDIM eq. 12,
    sigma = 0) over :func:`tail_indices`, each call jumping to the alpha-bar of the timestep the next
    call evaluates (the last to the chain's final one).  With every step of the chain as a call it
    is the chain at eta = 0 (exactly so when the step count divides the training timesteps, as 20
    of 1000 does; otherwise diffusers lands each step one timestep off the next one's).

    Why DPOK can use it (``dpok.tail_steps``): after the trained steps only the reward of the image
    is needed, and a tail of a few calls can predict the chain's reward as well as the remaining
    stochastic steps do, at a fraction of their UNet calls (``make probe-steps`` says how short a
    tail is enough for a pipeline and reward: :mod:`tools.probe`).
    """
    s, b = policy.schedule, x.shape[0]
    steps = tail_indices(start, s.num_steps, tail_steps)
    for j, i in enumerate(steps):
        index = torch.full((b,), i, device=x.device, dtype=torch.long)
        out = policy.model_output(policy.unet, x, index, cond, uncond)
        x = s.ode_step(out, x, i, steps[j + 1] if j + 1 < len(steps) else None)
    return x


def denoise(policy: DiffusionPolicy, x: torch.Tensor, start: int, stop: int, cond: TextCond,
            uncond: TextCond, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Steps ``start`` .. ``stop`` - 1 of the chain from the latents ``x`` (B, C, H, W) before step
    ``start``: the latents after them, fp32.  Each step lands on its Gaussian's mean plus its std
    times ``noise[i]`` ((T, B, C, H, W), the whole chain's per-step noise, drawn once so that the
    base model and a second pass can take the same); ``noise`` None: the means alone, the chain at
    eta = 0.  No decorator: under gradients the graph runs through every step (the
    reparameterised chain DRaFT differentiates, :mod:`finetune.draft`)."""
    for i in range(start, stop):
        index = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        g = policy.step(x, index, cond, uncond).gaussian
        x = g.mean if noise is None else g.mean + g.std * noise[i]
    return x
