"""The reward model's losses, on head logits r (unbounded; the reward is sigmoid(r)).

Every loss is a weighted mean sum_i w_i l_i / sum_i w_i over its rows; ``weights=None`` is the
plain mean.  Per-prompt weights (1 / rows of the prompt) keep prompts with many images from
dominating.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def binary_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                kind: str = "mse") -> torch.Tensor:
    """Binary feedback (targets in [0, 1]: 1 good, 0 bad, or the share of raters who said good).

    mse: (sigmoid(r) - y)^2, Lee et al.'s regression of the reward onto {0, 1} labels;
    bce: -[y log sigmoid(r) + (1 - y) log(1 - sigmoid(r))].
    """
    if kind == "mse":
        losses = (torch.sigmoid(logits) - targets) ** 2
    elif kind == "bce":
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    else:
        raise ValueError(f"unknown binary loss {kind!r}")
    return _weighted_mean(losses, weights)


def bradley_terry_loss(logits_0: torch.Tensor, logits_1: torch.Tensor, label_0: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry on preference pairs: P(image 0 preferred) = sigmoid(r_0 - r_1), and

        l = -[y log sigmoid(r_0 - r_1) + (1 - y) log sigmoid(r_1 - r_0)],

    with y = label_0: 1 if image 0 ranked better, 0 if worse, 0.5 for a tie (PickScore's 0.5/0.5
    target; a tie pulls the two rewards together, its minimum is at r_0 = r_1, l = log 2).  This
    is the softmax over the two images of PickScore / ImageReward's -log sigmoid(r_w - r_l).
    """
    d = logits_0 - logits_1
    losses = -(label_0 * F.logsigmoid(d) + (1.0 - label_0) * F.logsigmoid(-d))
    return _weighted_mean(losses, weights)


def prompt_classification_loss(logits: torch.Tensor, mask: torch.Tensor | None = None,
                               temperature: float = 1.0,
                               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Lee et al.'s auxiliary loss: for an image labelled good, which of N prompts is its own?

    ``logits`` (B, N): r(x, z_i) with column 0 the true prompt and columns 1.. perturbed prompts;
    ``mask`` (B, N) bool marks real candidates (an image whose prompt has fewer than N - 1
    perturbations has padding).  l = -log softmax(r(x, z) / T)_0.
    """
    scaled = logits / temperature
    if mask is not None:
        scaled = scaled.masked_fill(~mask, float("-inf"))
    losses = -torch.log_softmax(scaled, dim=-1)[:, 0]
    return _weighted_mean(losses, weights)


def per_group_weights(groups) -> torch.Tensor:
    """1 / (rows in the row's group), e.g. groups = prompt ids: each prompt weighs the same."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return torch.as_tensor(1.0 / counts[inverse], dtype=torch.float32)
