"""A tiny CLIP for the shapes world: transformers ``CLIPModel`` trained contrastively on renders.

Saved with ``save_pretrained`` beside the shapes tokenizer and a ``CLIPImageProcessor`` (64 px), so
``CLIPModel.from_pretrained(dir)`` / :func:`core.loading.load_clip` load it like CLIP ViT-L/14.

Loss.  There are only 160 prompts, so every step embeds *all* of them and each image is contrasted
with every prompt (the complete set of hard negatives: every one-attribute perturbation is in it).
A render may show several prompts ("one circle" and "one red circle" both describe a red circle),
so the positives of image i are all prompts its scene satisfies (``match_matrix``), and each
positive must beat all negatives on its own:

    L_i2t = mean_{i, p in P(i)} [ log(exp s_ip + sum_{n in N(i)} exp s_in) - s_ip ]

(standard InfoNCE when |P(i)| = 1; a plain multi-positive softmax would let the least specific
prompt take all the mass).  The text-to-image term is the same on the transposed logits, over the
batch's images: for a fixed prompt, images that show it score above those that do not, which is
what a reward model needs to rank images.  Each batch pairs every image with a render of a
one-attribute perturbation of its prompt, so near-miss images meet in the batch.

Augmentation: blur and grain (``degrade``) on most images, so the model also reads the soft edges
of generated images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import seeds
from core.schedules import learning_rate
from shapes.tokenizer import MAX_LENGTH, build_tokenizer, text_config_ids
from shapes.training.common import (Progress, degrade_batch, pick_device, render_pool,
                                    seed_everything, to_clip)
from shapes.world import all_prompts, perturbations


@dataclass(frozen=True)
class CLIPArch:
    text_hidden: int = 64  # also the cross-attention width if the SD text encoder starts from it
    text_layers: int = 2
    text_heads: int = 4
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    patch_size: int = 8  # 64 px -> 8x8 patches of 8 px; objects span 13-19 px (about 2 patches)
    projection_dim: int = 64
    image_size: int = 64


@dataclass(frozen=True)
class CLIPTrainConfig:
    arch: CLIPArch = field(default_factory=CLIPArch)
    steps: int = 2500
    batch_size: int = 64  # anchor images; each brings a perturbed-prompt partner (2x per step)
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    pool_size: int = 12000  # renders, prompts uniform over all 160
    degrade_prob: float = 0.8
    blur_sigma: tuple[float, float] = (0.0, 1.5)  # px at 64x64
    noise_sigma: tuple[float, float] = (0.0, 15.0)  # 0-255 units
    seed: int = 0
    log_every: int = 100
    device: str = "auto"


@dataclass(frozen=True)
class CLIPTrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    n_params: int


def build_clip(arch: CLIPArch, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
                         num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
                         **text_config_ids(tokenizer)),
        vision_config=dict(hidden_size=arch.vision_hidden, intermediate_size=4 * arch.vision_hidden,
                           num_hidden_layers=arch.vision_layers,
                           num_attention_heads=arch.vision_heads, image_size=arch.image_size,
                           patch_size=arch.patch_size),
        projection_dim=arch.projection_dim)
    return CLIPModel(config)


def image_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over (row, positive) of ``log(exp s_p + sum_neg exp s_n) - s_p``.

    logits, pos: (R, C); rows without a positive or without a negative are skipped."""
    neg = ~pos
    lse_neg = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)  # (R, 1)
    per = torch.logaddexp(logits, lse_neg) - logits  # (R, C)
    ok = pos & neg.any(dim=1, keepdim=True)
    return per[ok].mean()


def train_clip(cfg: CLIPTrainConfig, out_dir: str | Path, progress: bool = True) -> CLIPTrainResult:
    """Train and save a CLIP folder at ``out_dir`` (config.json, weights, tokenizer, processor)."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    out_dir = Path(out_dir)
    tok = build_tokenizer()
    model = build_clip(cfg.arch, tok).to(device)
    prompts = all_prompts()
    texts = tok([p.text for p in prompts], padding="max_length", max_length=MAX_LENGTH,
                return_tensors="pt").to(device)

    pool = render_pool(prompts, None, cfg.pool_size, seed=cfg.seed, size=cfg.arch.image_size,
                       progress=progress)
    match = torch.from_numpy(pool.match_matrix())  # (N, P)
    by_prompt = [np.flatnonzero(pool.prompt_index == j) for j in range(len(prompts))]
    index_of = {p: j for j, p in enumerate(prompts)}
    rng = seeds.rng(cfg.seed, seeds.Stream.CLIP_TRAINING)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
    bar = Progress("clip", cfg.steps, cfg.log_every, progress)
    model.train()
    loss_v = float("nan")
    for step in range(cfg.steps):
        anchors = rng.integers(len(pool.images), size=cfg.batch_size)
        partners = []
        for a in anchors:  # a render of a one-attribute perturbation of the anchor's prompt
            q = perturbations(prompts[pool.prompt_index[a]], 1, rng)[0]
            cands = by_prompt[index_of[q]]
            partners.append(cands[rng.integers(len(cands))] if len(cands) else a)
        idx = np.concatenate([anchors, np.array(partners)])
        imgs = degrade_batch(pool.images[idx], rng, cfg.degrade_prob, cfg.blur_sigma, cfg.noise_sigma)
        if rng.random() < 0.5:  # mirror the batch: the world is mirror-symmetric
            imgs = imgs[:, :, ::-1].copy()
        pos = match[idx].to(device)  # (2B, P)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.steps, cfg.warmup_steps, cfg.lr)  # warm-up, cosine to 5 %
        out = model(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"],
                    pixel_values=to_clip(imgs).to(device))
        logits = out.logits_per_image  # (2B, P), already scaled by exp(logit_scale)
        loss = 0.5 * (multi_positive_nce(logits, pos) + multi_positive_nce(logits.T, pos.T))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as in CLIP
        loss_v = float(loss.detach())
        bar.step(step, loss=loss_v, scale=float(model.logit_scale.exp()))
    seconds = bar.close()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.cpu().save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    image_processor(cfg.arch.image_size).save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return CLIPTrainResult(out_dir, cfg.steps, seconds, loss_v, n_params)
