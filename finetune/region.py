"""Region-aware fine-tuning: change what was wrong, keep what was right (Focus-N-Fix, Xing et al.
2025, on the region feedback of Rich Human Feedback, Liang et al. 2024).

The base model draws Î₀ from the same noise as the policy's image Î (same initial latents, same
per-step noise: :func:`finetune.policy.base_policy`).  A region model marks where Î₀ is wrong: its heatmap,
thresholded and dilated, is the problem mask M (:func:`problem_masks`).  Focus-N-Fix's objective

    r(Î) - β · ‖(1 - M) ⊙ (Î₀ - Î)‖₂                                    (Focus-N-Fix, eq. 3)

rewards the fix and charges every change outside the problem region.  DPOK takes it as its reward
(:func:`outside_change`, the norm divided by √(3HW) so that β does not depend on the image size);
DRaFT (:mod:`finetune.draft`), as the paper, maximises it by its gradient, which lands on the kept
pixels themselves.

What is charged is the *keep* region, 1 - M (:func:`keep_masks`).  An image with no marked region
is kept whole: that is what stops fine-tuning from breaking what the base drew right, and it also
charges the fix of a fault no rater can point to (a missing object, drawn somewhere unmarked).

RWL, which trains on the base model's own samples, takes the same penalty in its likelihood form:
on each sample's keep region the fine-tuned model's prediction at the sample's noised latents is
held to the base model's (:func:`keep_loss`, a masked distillation term beside eq. 2's terms, over
every sample of D_model, whatever its reward weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.config import NonNegativeFloat, Share


@dataclass(frozen=True)
class RegionConfig:
    # β of Focus-N-Fix: the weight of the change outside the problem region (0: off, plain DPOK / RWL).
    # Needs a reward model with a region head (`make reward` trained on marks).
    weight: NonNegativeFloat = 0.0
    # the heatmap value above which a pixel is a problem; null: the region head's own, chosen when
    # the reward trained to best match the raters' marks (reward.region.fit.calibrate_threshold)
    threshold: Share | None = None
    dilate: Share = 0.06  # the problem mask grown by this fraction of the image side (the marks' disks are coarse)


def keep_regions(reward, images: torch.Tensor, prompts: list[str], cfg: RegionConfig) -> torch.Tensor:
    """(B, H, W) bool: what the penalty protects on ``images`` (B, 3, H, W) in [0, 1], K = 1 - M of
    the problem masks the reward's region model (:meth:`reward.reward_fn.Reward.masks`) marks at
    ``cfg.threshold``, grown by ``cfg.dilate``."""
    return keep_masks(problem_masks(reward.masks(images, prompts, cfg.threshold), cfg.dilate))


def problem_masks(masks: torch.Tensor, dilate: float) -> torch.Tensor:
    """(B, H, W) bool: the region model's problem masks ``masks`` (B, H, W) bool grown by
    ``dilate`` x the shorter side in every direction (a max-pool, square neighbourhood)."""
    m = masks.float()
    r = int(round(dilate * min(masks.shape[-2:])))
    if r > 0:
        m = F.max_pool2d(m[:, None], kernel_size=2 * r + 1, stride=1, padding=r)[:, 0]
    return m > 0.5


def keep_masks(problem: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: what the penalty protects, K = 1 - M of the problem masks ``problem``."""
    return ~problem


def outside_change(images: torch.Tensor, base: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B,) ‖K ⊙ (Î₀ - Î)‖₂ / √(3HW): the change of ``images`` from the base's ``base`` (both
    (B, 3, H, W) in [0, 1]) on the keep masks ``keep`` (B, H, W) bool (:func:`keep_masks`, K = 1 - M
    of eq. 3), in RMS units over the whole image: 0 when nothing kept moved, 1 when every channel of
    every pixel flipped from 0 to 1."""
    k = keep.to(images.dtype)[:, None]  # (B, 1, H, W)
    ms = ((images - base) * k).pow(2).mean(dim=(1, 2, 3))
    # sqrt's gradient is infinite at 0 (an image equal to its base, as at a DRaFT run's first step,
    # finetune.draft): there the norm's gradient is taken as 0 (a subgradient), never NaN
    moved = ms > 0
    return torch.where(moved, torch.where(moved, ms, torch.ones_like(ms)).sqrt(), torch.zeros_like(ms))


def latent_keep(keep: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) bool: a latent cell is kept when every pixel it covers is (``keep`` (B, H, W)
    bool, :func:`keep_masks`): a cell touching the problem region may change."""
    return -F.adaptive_max_pool2d(-keep.float()[:, None], latent_hw) > 0.5


def keep_loss(pred: torch.Tensor, base_pred: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference of the fine-tuned and the base model's outputs (B, C, h, w) over
    the kept latent cells (``keep`` (B, 1, h, w) bool, :func:`latent_keep`); 0 where nothing is kept."""
    k = keep.to(pred.dtype)
    sq = (pred - base_pred.detach()).pow(2) * k
    return sq.sum(dim=(1, 2, 3)) / (k.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp(min=1)
