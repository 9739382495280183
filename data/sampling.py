"""Plain, seeded, batched sampling from any StableDiffusionPipeline (no log-probs; the RL sampler
with log-probs lives in finetune/).  Used by ``make generate``, evaluation and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from data.generations import SamplerSettings


@dataclass(frozen=True)
class SamplingConfig:
    num_inference_steps: int = 20
    # Tuned on the shapes-world base model (common train prompts, K=2, seeds 100-101): guidance 3 /
    # eta 0: 0.39 overall; 5 / 0: 0.43; 7.5 / 0: 0.45; 5 / eta 1: 0.55; 7.5 / 1: 0.49.  Stochastic
    # DDIM (eta 1) commits to one background for prompts that leave it free, where eta 0 drew a
    # washed-out average.  Caution: with eta 1, diffusers' DDIMScheduler gives NaN images at 25 or 30
    # steps (20 is fine): at t=999 the zero-terminal-SNR alpha_bar is 0, sigma^2 = 1 - alpha_bar_prev,
    # and sqrt(1 - alpha_bar_prev - sigma^2) takes the root of a rounding-negative number.
    guidance_scale: float = 5.0
    eta: float = 1.0
    batch_size: int = 32
    height: int | None = None  # None: the pipeline's native size (unet.sample_size * VAE factor)
    width: int | None = None

    def settings(self, pipe) -> SamplerSettings:
        return SamplerSettings(sampler=type(pipe.scheduler).__name__,
                               num_inference_steps=self.num_inference_steps,
                               guidance_scale=self.guidance_scale, eta=self.eta)


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig = SamplingConfig(),
                    progress=None) -> list[Image.Image]:
    """One image per (prompt, seed).  Each image has its own ``torch.Generator`` seeded with its
    seed, so an image does not depend on the batch it was drawn in."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    out: list[Image.Image] = []
    device = pipe.device
    gen_device = "cpu" if device.type == "mps" else device
    for start in range(0, len(prompts), cfg.batch_size):
        p = prompts[start:start + cfg.batch_size]
        g = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[start:start + cfg.batch_size]]
        result = pipe(p, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                      eta=cfg.eta, generator=g, height=cfg.height, width=cfg.width, output_type="pil")
        out.extend(result.images)
        if progress is not None:
            progress.update(len(p))
    return out
