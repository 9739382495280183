"""CLIP image preprocessing in torch ops, so tensors never round-trip through PIL.

The fine-tuning stage hands decoded VAE outputs, float (B, 3, H, W) in [0, 1] on the GPU, to the
reward model; converting them to PIL for the Hugging Face image processor would copy to the CPU
and lose gradients.  :class:`ClipPreprocess` reproduces that processor's steps from its settings
(resize the shortest edge with bicubic + antialias, centre-crop, normalise with its mean/std) on
any device.  Against the PIL-based processor the difference is resampling detail only (PIL's and
torch's bicubic kernels differ slightly at the borders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import UserError


def _size_get(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


@dataclass(frozen=True)
class ClipPreprocess:
    shortest_edge: int | None  # resize so the shorter side has this many pixels (None: see resize_hw)
    resize_hw: tuple[int, int] | None  # or resize to exactly (height, width)
    crop_hw: tuple[int, int] | None  # centre crop (height, width); None = no crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_processor(cls, processor) -> "ClipPreprocess":
        """Settings of a transformers CLIP image processor (PIL or torchvision backend)."""
        size = getattr(processor, "size", None)
        shortest = resize_hw = None
        if getattr(processor, "do_resize", True) and size is not None:
            shortest = _size_get(size, "shortest_edge")
            h, w = _size_get(size, "height"), _size_get(size, "width")
            if shortest is None and h and w:
                resize_hw = (int(h), int(w))
        crop = None
        if getattr(processor, "do_center_crop", False):
            cs = getattr(processor, "crop_size", None)
            h, w = _size_get(cs, "height"), _size_get(cs, "width")
            if h and w:
                crop = (int(h), int(w))
        if getattr(processor, "do_normalize", True):
            mean = tuple(float(m) for m in processor.image_mean)
            std = tuple(float(s) for s in processor.image_std)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(int(shortest) if shortest else None, resize_hw, crop, mean, std)

    @property
    def output_hw(self) -> tuple[int, int] | None:
        return self.crop_hw or self.resize_hw

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [0, 1] -> normalised (B, 3, h, w) CLIP input, differentiable."""
        x = pixels
        if self.shortest_edge is not None:
            h, w = x.shape[-2:]
            short, long = min(h, w), max(h, w)
            # As transformers' get_resize_output_image_size: the long side scales, truncated.
            new_long = int(self.shortest_edge * long / short)
            new_hw = (self.shortest_edge, new_long) if h <= w else (new_long, self.shortest_edge)
            if new_hw != (h, w):
                x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
        elif self.resize_hw is not None and tuple(x.shape[-2:]) != self.resize_hw:
            x = F.interpolate(x, size=self.resize_hw, mode="bicubic", antialias=True,
                              align_corners=False)
        if self.crop_hw is not None:
            x = _center_crop(x, self.crop_hw)
        x = x.clamp(0.0, 1.0)  # bicubic overshoots at edges; PIL clips to 0..255 too
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _center_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    ch, cw = hw
    h, w = x.shape[-2:]
    if h < ch or w < cw:  # as the HF processor: pad with zeros to the crop size first
        ph, pw = max(0, ch - h), max(0, cw - w)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def to_pixel_batches(images, device: torch.device, dtype: torch.dtype = torch.float32
                     ) -> list[torch.Tensor]:
    """Images as float (B, 3, H, W) batches in [0, 1] on ``device``.

    Accepts a list of PIL images, a uint8 numpy array (B, H, W, 3), a float tensor (B, 3, H, W) in
    [0, 1] on any device, or a uint8 tensor (B, 3, H, W).  Returns one batch, except for a list of
    PIL images of different sizes: one batch per size (in order, so concatenating the results
    keeps the input order).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"an image tensor must be (B, 3, H, W), got {tuple(images.shape)}.",
                            "pass decoded images as a float tensor (B, 3, H, W) in [0, 1].")
        x = images.to(device)
        if x.dtype == torch.uint8:
            x = x.to(dtype) / 255.0
        elif not x.is_floating_point():
            raise UserError(f"image tensor dtype {images.dtype} is not float or uint8.",
                            "pass float pixels in [0, 1] or uint8 in 0..255.")
        return [x.to(dtype)]
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise UserError(f"an image array must be uint8 (B, H, W, 3), got {images.dtype} "
                            f"{images.shape}.", "pass uint8 RGB pixels, batch first.")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return [x.permute(0, 3, 1, 2).to(dtype) / 255.0]
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise UserError("images must be a list of PIL images, a uint8 array (B, H, W, 3) or a "
                        "float tensor (B, 3, H, W).", "convert the images to one of these.")
    batches: list[torch.Tensor] = []
    run: list[np.ndarray] = []
    for im in images:  # consecutive same-size images stack into one batch
        a = np.asarray(im.convert("RGB"))
        if run and a.shape != run[0].shape:
            batches.append(_stack(run, device, dtype))
            run = []
        run.append(a)
    batches.append(_stack(run, device, dtype))
    return batches


def _stack(arrays: list[np.ndarray], device, dtype) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays)).to(device)
    return x.permute(0, 3, 1, 2).to(dtype) / 255.0


def num_images(images) -> int:
    """How many images an input of :func:`to_pixel_batches` holds."""
    if hasattr(images, "shape"):  # tensor or numpy array
        return int(images.shape[0])
    return len(images)


def prompt_list(images, prompts: list[str] | str) -> list[str]:
    """One prompt per image: ``prompts`` repeated when it is one string, else checked."""
    n = num_images(images)
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(prompts) != n:
        raise UserError(f"got {n} images and {len(prompts)} prompts.", "pass one prompt per image.")
    return prompts
