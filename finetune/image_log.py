"""Sample images of a fine-tuning run: a grid to TensorBoard and, if asked, to a PNG file."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from core.images import image_grid


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
