"""Sample images of a fine-tuning run: the policy's images from fixed noise, and the sample grid
both methods log (to TensorBoard and a PNG file) as training goes."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from core import seeds
from core.images import image_grid
from finetune.policy import DiffusionPolicy
from finetune.prompts import grid_prompts
from finetune.sampler import decode_latents, sample_trajectories


def log_images(accelerator, tag: str, images: torch.Tensor, step: int, path: Path | None = None,
               ncols: int = 4) -> None:
    """A grid of images (B, 3, H, W) in [0, 1] to TensorBoard and, if given, a PNG file."""
    if not accelerator.is_main_process:
        return
    grid = image_grid(images, ncols)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
    accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, grid, step, dataformats="HWC")


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


class SampleGrid:
    """The run's sample grid: the grid prompts (:func:`finetune.prompts.grid_prompts`, read and
    embedded once) from the same noise every time, so the grids compare across rounds and steps."""

    def __init__(self, run):
        self.run = run
        self.prompts = grid_prompts(run.cfg, None if run.labels is None else run.labels.prompts)
        self.cond, self.uncond = run.encode_prompts(self.prompts)

    def log(self, step: int, name: str) -> None:
        """The current policy's grid to TensorBoard at ``step`` and to ``samples/<name>.png``."""
        run = self.run
        images = fixed_noise_images(run.sampling_policy(), run.comps.pipe, self.cond, self.uncond, run.latent_shape,
                                    run.cfg.seed + seeds.FIXED_NOISE["grid"], self.prompts)
        log_images(run.accelerator, "samples/eval_prompts", images, step, run.out / "samples" / f"{name}.png",
                   ncols=len(self.prompts))
