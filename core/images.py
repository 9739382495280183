"""Image helpers shared by the stages: PIL images <-> float tensors in [0, 1], and image grids."""

from __future__ import annotations

import numpy as np
import torch


def pil_to_tensor(images) -> torch.Tensor:
    """PIL images (equal sizes) -> float tensor (N, 3, H, W) in [0, 1]."""
    arr = np.stack([np.array(im.convert("RGB")) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] on any device -> uint8 array (B, H, W, 3)."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, ncols: int) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> uint8 (rows*H, ncols*W, 3) with 2-px white gutters."""
    b, _, h, w = images.shape
    rows = (b + ncols - 1) // ncols
    grid = np.full((rows * (h + 2), ncols * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(to_uint8(images)):
        r, c = divmod(i, ncols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    return grid
