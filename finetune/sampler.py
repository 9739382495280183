"""Sampling trajectories with per-step log-probs from any Stable Diffusion pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finetune.policy import DiffusionPolicy
from finetune.rl_math import gaussian_log_prob


@dataclass
class Trajectory:
    """A batch of denoising trajectories (one per prompt) under the policy.

    Shapes: B samples, T steps, latents (C, H, W); L tokens, D text width.
    """

    latents: torch.Tensor  # (B, T + 1, C, H, W) fp32: x_T, ..., x_0
    log_probs: torch.Tensor  # (B, T) fp32: log p(x_{t-1} | x_t) under the sampling policy
    prompt_embeds: torch.Tensor  # (B, L, D)
    negative_embeds: torch.Tensor  # (B, L, D): the empty prompt, for guidance
    prompts: list[str]

    @property
    def final_latents(self) -> torch.Tensor:
        return self.latents[:, -1]

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) text embeddings, each (B, L, D), with the pipeline's own encoder."""
    cond, uncond = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=True, negative_prompt=[""] * len(prompts))
    return cond, uncond


@torch.no_grad()
def sample_trajectories(policy: DiffusionPolicy, cond: torch.Tensor, uncond: torch.Tensor,
                        latent_shape: tuple[int, int, int], generator: torch.Generator,
                        prompts: list[str]) -> Trajectory:
    """Run the DDIM chain from x_T ~ N(0, I), recording latents and fp32 log-probs of each step.

    ``generator`` lives on the latents' device and makes the whole batch reproducible.
    """
    device = cond.device
    b = cond.shape[0]
    schedule = policy.schedule
    x = torch.randn((b, *latent_shape), generator=generator, device=device) * schedule.init_noise_sigma
    latents, log_probs = [x], []
    for i in range(schedule.num_steps):
        index = torch.full((b,), i, device=device, dtype=torch.long)
        g = policy.step(x, index, cond, uncond).gaussian
        noise = torch.randn(x.shape, generator=generator, device=device)
        x = g.mean + g.std * noise
        log_probs.append(gaussian_log_prob(x, g.mean, g.std))
        latents.append(x)
    return Trajectory(torch.stack(latents, 1), torch.stack(log_probs, 1), cond, uncond, list(prompts))


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], fp32."""
    dtype = next(vae.parameters()).dtype
    images = vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)
