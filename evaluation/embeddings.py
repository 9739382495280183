"""CLIP embeddings and the Fréchet distance: the one implementation every evaluation uses (``make
eval``'s fidelity proxy, the base CLIP's zero-shot retrieval on its card).

Images go through :class:`reward.preprocess.ClipPreprocess`, the reward model's own torch
preprocessing (the CLIP image processor's resize, crop and normalisation), so float tensors from a
pipeline or a renderer are embedded without a round trip through PIL, on whatever device the CLIP
is on; embeddings come back unit-norm, as NumPy arrays on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.errors import UserError
from core.images import pil_to_tensor
from reward.preprocess import ClipPreprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what a reference folder's images may be


def _unit(features) -> torch.Tensor:
    features = getattr(features, "pooler_output", features)  # newer transformers return an output object
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


@torch.no_grad()
def clip_image_embeddings(clip, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Unit-norm CLIP image embeddings (N, D) of images (N, 3, H, W) in [0, 1] of a loaded CLIP
    (``core.loading.LoadedCLIP``), preprocessed in torch exactly as the reward model does."""
    preprocess = ClipPreprocess.from_processor(clip.image_processor)
    device = clip.model.device
    out = [_unit(clip.model.get_image_features(pixel_values=preprocess(images[i:i + batch_size].float().to(device))))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def clip_text_embeddings(clip, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm CLIP text embeddings (N, D) of ``texts``, comparable with
    :func:`clip_image_embeddings` by a dot product."""
    device = clip.model.device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = clip.tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt").to(device)
        out.append(_unit(clip.model.get_text_features(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"])))
    return torch.cat(out).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two sets of embeddings (N, D)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def reference_embeddings(clip, folder: str | os.PathLike, batch_size: int = 64) -> np.ndarray:
    """CLIP image embeddings (N, D) of every image under ``folder``, in sorted path order; images
    of any sizes (``batch_size`` files at a time, each size one batch through
    :func:`clip_image_embeddings`)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"reference image folder {root} does not exist.",
                        "pass a folder of images as reference_images=, or leave it out.")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(f"reference image folder {root} holds {len(files)} image(s); a Frechet distance needs "
                        f"at least 2.", f"put the reference images ({', '.join(IMAGE_SUFFIXES)}) in it.")
    rows: list[np.ndarray] = [np.empty(0)] * len(files)
    for start in range(0, len(files), batch_size):
        by_size: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}
        for i in range(start, min(start + batch_size, len(files))):
            try:
                with Image.open(files[i]) as im:
                    rgb = im.convert("RGB")
            except OSError as e:
                raise UserError(f"reference image {files[i]} is not a readable image ({e}).",
                                "remove it from the reference folder or replace it.") from None
            by_size.setdefault(rgb.size, []).append((i, rgb))
        for group in by_size.values():
            for (i, _), e in zip(group, clip_image_embeddings(clip, pil_to_tensor([im for _, im in group]))):
                rows[i] = e
    return np.stack(rows)
