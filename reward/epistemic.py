"""The reward's epistemic uncertainty: a neural-linear, linear-UCB spread on the head's last hidden
layer, and the optimistic reward built on it.

Why: SEIKO (Uehara et al., ICML 2024, "Feedback efficient online fine-tuning of diffusion models")
shows that a loop of fine-tuning and new labels pays when the surrogate reward carries an
*epistemic* uncertainty and fine-tuning uses it optimistically (an upper confidence bound), so the
policy explores images the reward has not seen rather than exploiting its errors there; a linear
UCB on fixed features beat a bootstrap ensemble there.

What: the head's logit is linear in φ, the output of its MLP without the last layer
(:meth:`reward.model.RewardHead.logit_and_hidden`), r = wᵀφ + b (+ the cosine skip, held fixed).
Holding φ fixed (the neural-linear model: Riquelme, Tucker & Snoek, ICLR 2018, "Deep Bayesian
bandits showdown"; Kristiadi et al., ICML 2020, last-layer Laplace), the Laplace approximation of
logistic regression (MacKay 1992; Bishop, PRML section 4.5) makes the posterior over w Gaussian
around the trained weights with precision

    A = λ I + Σ_i p_i (1 − p_i) φ_i φ_iᵀ,     p_i = σ(r_i)

over the training (image, prompt) rows, σ(r) being the probability the head was fitted as (Lee et
al.'s loss is on σ(r); Platt calibration comes after).  The raw logit's standard deviation at φ is
sqrt(φᵀ A⁻¹ φ) (the GLM-UCB width of Filippi et al., NeurIPS 2010, and LinUCB's of Li et al., WWW
2010); calibration multiplies the logit by a, so the **spread** in calibrated-logit units is

    s = |a| · sqrt(φᵀ A⁻¹ φ).

A direction no training row spans keeps the prior's width |a|·|φ|/sqrt(λ); each row shrinks it.
The bias b is held fixed (a shift common to every image, it would not change which images look
uncertain).  Saved as ``epistemic.safetensors`` (A⁻¹ and λ) with an ``"epistemic"`` entry in
``reward_config.json``; a folder without them loads with ``model.epistemic = None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import UserError

EPISTEMIC_FILE = "epistemic.safetensors"
KIND = "linear-ucb"


@dataclass(frozen=True, eq=False)
class Epistemic:
    """A trained head's last-layer posterior: ``covariance`` A⁻¹ (H, H) float64, on any device."""

    covariance: torch.Tensor
    lam: float  # λ, the prior precision of each last-layer weight
    rows: int  # training (image, prompt) rows in A
    kind: str = KIND


# ---------------------------------------------------------------------------------------------
# The math (pure functions)


def precision(phi: torch.Tensor, p: torch.Tensor, lam: float) -> torch.Tensor:
    """A = λ I + Σ_i p_i (1 − p_i) φ_i φ_iᵀ, (H, H) float64.  ``phi`` (N, H), ``p`` (N,) in [0, 1]."""
    phi, p = phi.double(), p.double()
    return lam * torch.eye(phi.shape[1], dtype=torch.float64, device=phi.device) \
        + phi.T @ (phi * (p * (1 - p))[:, None])


def logit_std(phi: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """sqrt(φᵀ A⁻¹ φ) of each row of ``phi`` (N, H): the raw logit's standard deviation, (N,) float64."""
    phi = phi.double()
    quad = ((phi @ covariance.to(phi.device, torch.float64)) * phi).sum(-1)
    return quad.clamp_min(0).sqrt()  # A⁻¹ is positive definite: a negative value is rounding


def spread(phi: torch.Tensor, covariance: torch.Tensor, calib_scale: torch.Tensor | float) -> torch.Tensor:
    """s = |a| · sqrt(φᵀ A⁻¹ φ), (N,) float64: the spread in calibrated-logit units."""
    return abs(float(calib_scale)) * logit_std(phi, covariance)


def fit_epistemic(logits: torch.Tensor, phi: torch.Tensor, lam: float) -> Epistemic:
    """The posterior of a head's last layer from its training rows: ``logits`` (N,) and ``phi``
    (N, H), the head's raw logit and last hidden layer on each trained (image, prompt) row, without
    dropout (:meth:`reward.model.RewardHead.logit_and_hidden` in eval mode)."""
    a = precision(phi, torch.sigmoid(logits), lam)
    return Epistemic(torch.linalg.inv(a), float(lam), int(len(phi)))


def optimistic(logits: torch.Tensor, phi: torch.Tensor, ep: Epistemic, calib_scale, calib_bias, *,
               raw: bool, optimism: float) -> torch.Tensor:
    """The upper bound of rewards with raw logits ``logits`` (B,) and last hidden layer ``phi``
    (B, H): σ(a r + b + c s), or with ``raw`` r + c sqrt(φᵀ A⁻¹ φ) (the raw logit moved up by c of
    its own deviations, s / |a|); c = ``optimism``."""
    std = logit_std(phi, ep.covariance).to(logits.dtype)
    if raw:
        return logits + optimism * std
    return torch.sigmoid(calib_scale * logits + calib_bias + optimism * calib_scale.abs() * std)


# ---------------------------------------------------------------------------------------------
# In the reward model folder


def save_epistemic(ep: Epistemic, directory: Path) -> dict:
    """Write A⁻¹ and λ; returns the ``"epistemic"`` entry of ``reward_config.json``."""
    from safetensors.torch import save_file

    save_file({"covariance": ep.covariance.detach().double().cpu().contiguous(),
               "lambda": torch.tensor(ep.lam, dtype=torch.float64)}, directory / EPISTEMIC_FILE)
    return dict(kind=ep.kind, file=EPISTEMIC_FILE, hidden=int(ep.covariance.shape[0]), rows=ep.rows,
                output="spread = |calib_scale| * sqrt(phi^T covariance phi), calibrated-logit units")


def load_epistemic(directory: str | os.PathLike, entry: dict | None, hidden: int, device) -> Epistemic | None:
    """The epistemic part a reward model folder carries (None when ``entry`` is None: a folder
    saved without one).  ``hidden``: the head's last hidden width, the covariance's size."""
    if entry is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / entry.get("file", EPISTEMIC_FILE)
    try:
        state = load_file(path)
        cov, lam = state["covariance"], float(state["lambda"])
    except (OSError, SafetensorError, KeyError) as e:
        raise UserError(f"could not load the epistemic part {path}: {e}", "retrain or restore the folder.") from None
    if tuple(cov.shape) != (hidden, hidden) or not bool(torch.isfinite(cov).all()):
        raise UserError(f"the epistemic part {path} is not a finite {hidden}x{hidden} covariance "
                        f"(shape {tuple(cov.shape)}).", "retrain or restore the folder.")
    return Epistemic(cov.to(device), lam, int(entry.get("rows", 0)), entry.get("kind", KIND))

