"""The forward-noising identities of a diffusion model, as pure tensor functions: what a UNet's
output says about the clean sample and the noise, for any prediction type.  Shared by the RL math
(:mod:`finetune.rl_math`) and the side network's inputs (:mod:`core.side`)."""

from __future__ import annotations

from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]


def bcast(a, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor shaped to broadcast against (B, C, H, W)."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() == 1 else a


def x0_and_eps(model_output: torch.Tensor, x_t: torch.Tensor, abar_t,
               prediction_type: PredictionType) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean sample x0_hat and noise eps_hat from a model output.

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, and the v-target is v = sqrt(abar) eps - sqrt(1 - abar) x0
    (Salimans & Ho 2022), so x0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(abar) v + sqrt(1 - abar) x_t.
    """
    a = bcast(abar_t, x_t)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (x_t - sb * model_output) / sa, model_output
    if prediction_type == "v_prediction":
        return sa * x_t - sb * model_output, sa * model_output + sb * x_t
    if prediction_type == "sample":
        return model_output, (x_t - sa * model_output) / sb
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
