"""The RL math of diffusion fine-tuning as pure tensor functions.

No scheduler, config or device in here: every function takes tensors (and floats) and returns
tensors, so each one is unit-tested against ``torch.distributions`` and ``gradcheck``.  The one
place that knows about diffusers schedulers is :mod:`finetune.scheduler`.

Notation (DDIM, Song et al. 2021, eq. 12 and 16; DPOK, Fan et al. 2023):
  x_t            latents at timestep t, shape (B, C, H, W)
  abar_t         cumulative product of alphas at t ("alpha bar"), a scalar or (B,) tensor
  sigma_t(eta)   eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
  p(x_{t-1}|x_t) = N(mu_t, sigma_t^2 I), mu_t = sqrt(abar_prev) x0_hat
                                             + sqrt(1 - abar_prev - sigma_t^2) eps_hat

Notation (flow matching, rectified flow; SD3 and FLUX, Esser et al. 2024):
  x_sigma        latents at noise level sigma in [0, 1]: x_sigma = (1 - sigma) x0 + sigma eps
  v              the model's velocity, trained towards eps - x0; the ODE runs sigma from 1 to 0
  sigma, sigma'  the current and the next noise level of a step, dt = sigma' - sigma < 0
  a              the Flow-SDE's noise level (Flow-GRPO's ``noise_level``; 0 is the ODE)
  p(x'|x)        = N(mu, (s_sigma sqrt(-dt))^2 I), s_sigma = a sqrt(sigma / (1 - sigma)),
                   mu = x + v dt + (s_sigma^2 / (2 sigma)) (x + (1 - sigma) v) dt
                   (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470, and their
                   ``sd3_sde_with_logprob.py``)

Reductions are stated per function: log-probs and KLs are *sums* over the latent dimensions (C, H,
W), i.e. the exact log-density / KL of one denoising step, so that a trajectory's log-likelihood is
the sum over steps and the KL term of DPOK's objective (Fan et al. eq. 7) has its proper scale.
(The official DPOK code averages over dimensions instead; that only rescales beta and the clip
range.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass(frozen=True)
class StepGaussian:
    """The Gaussian p(x_{t-1} | x_t) (or a flow step's p(x' | x)): mean (B, C, H, W) and std (scalar
    or broadcastable)."""

    mean: torch.Tensor
    std: torch.Tensor


def _bcast(a, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor shaped to broadcast against (B, C, H, W)."""
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() == 1 else a


def x0_and_eps(model_output: torch.Tensor, x_t: torch.Tensor, abar_t,
               prediction_type: PredictionType) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean sample x0_hat and noise eps_hat from a model output.

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, and the v-target is v = sqrt(abar) eps - sqrt(1 - abar) x0
    (Salimans & Ho 2022), so x0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(abar) v + sqrt(1 - abar) x_t.
    """
    a = _bcast(abar_t, x_t)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (x_t - sb * model_output) / sa, model_output
    if prediction_type == "v_prediction":
        return sa * x_t - sb * model_output, sa * model_output + sb * x_t
    if prediction_type == "sample":
        return model_output, (x_t - sa * model_output) / sb
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_sigma(abar_t, abar_prev, eta: float) -> torch.Tensor:
    """sigma_t(eta) of DDIM eq. 16; eta = 1 gives the DDPM posterior std."""
    abar_t, abar_prev = torch.as_tensor(abar_t), torch.as_tensor(abar_prev)
    var = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
    return eta * var.clamp_min(0).sqrt()


def ddim_step(model_output: torch.Tensor, x_t: torch.Tensor, abar_t, abar_prev, eta: float,
              prediction_type: PredictionType) -> StepGaussian:
    """Mean and std of the DDIM step p(x_{t-1} | x_t) (DDIM eq. 12 with sigma_t(eta) of eq. 16)."""
    x0, eps = x0_and_eps(model_output, x_t, abar_t, prediction_type)
    std = _bcast(ddim_sigma(abar_t, abar_prev, eta), x_t).to(x_t.dtype)
    ap = _bcast(abar_prev, x_t)
    direction = (1 - ap - std**2).clamp_min(0).sqrt() * eps
    return StepGaussian(mean=ap.sqrt() * x0 + direction, std=std)


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I), summed over all non-batch dimensions -> (B,).

    Equals ``Normal(mean, std).log_prob(x).flatten(1).sum(1)``.  ``std`` must be > 0.
    """
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).expand_as(x)
    z = (x - mean) / std
    return _sum_dims(-0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi))


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std^2 I) || N(mean_q, std^2 I)) = ||mean_p - mean_q||^2 / (2 std^2) -> (B,).

    The exact KL between the policy's and the base model's step Gaussians, which share sigma_t
    (DPOK eq. 7 bounds the trajectory KL by the sum of these over steps).
    """
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    return _sum_dims((mean_p - mean_q) ** 2 / (2 * std.expand_as(mean_p) ** 2))


Divergence = Literal["kl", "chi2", "hellinger"]


def step_divergence(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor,
                    kind: Divergence = "kl") -> torch.Tensor:
    """An f-divergence between the policy's and the base model's step Gaussians, which share sigma_t
    (Diffusion Controller's per-step regulariser), from delta = ||mean_p - mean_q||^2 / std^2 -> (B,):

    - ``kl``: KL(p || q) = delta / 2 (:func:`gaussian_kl`, DPOK eq. 7);
    - ``chi2``: Pearson chi^2(p || q) = exp(delta) - 1, which grows without bound, so it holds the
      policy closest to the base when it strays;
    - ``hellinger``: squared Hellinger distance 1 - exp(-delta / 8), bounded by 1, so it stops
      pulling once the policy is far.
    """
    delta = 2 * gaussian_kl(mean_p, mean_q, std)
    if kind == "kl":
        return delta / 2
    if kind == "chi2":
        return torch.expm1(delta)
    if kind == "hellinger":
        return -torch.expm1(-delta / 8)
    raise ValueError(f"unknown divergence {kind!r}")


@dataclass(frozen=True)
class PolicyLossOutput:
    loss: torch.Tensor  # scalar
    ratio: torch.Tensor  # (B,)
    clip_fraction: torch.Tensor  # scalar: share of samples whose ratio left [1-eps, 1+eps]
    approx_kl: torch.Tensor  # scalar: mean of ((r - 1) - log r), a low-variance KL(old || new) estimate


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float) -> PolicyLossOutput:
    """PPO's clipped surrogate in min form (Schulman et al. 2017 eq. 7), to be minimised:

        L = -mean( min(r A, clip(r, 1 - eps, 1 + eps) A) ),  r = exp(log_prob - old_log_prob).

    Unlike the official DPOK code's clamp of r itself, the min form keeps the gradient of samples
    whose update would move the ratio back towards 1.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return PolicyLossOutput(loss, ratio, clip_fraction, approx_kl)


AdvantageScale = Literal["group", "batch"]


def normalize_advantages(rewards: torch.Tensor, groups: torch.Tensor | None = None,
                         scale: AdvantageScale = "batch", eps: float = 1e-6) -> torch.Tensor:
    """(r - mean) / (std + eps), the mean per group (e.g. per prompt, as DDPO) or over the batch.

    ``groups`` is an integer tensor (B,) of group ids; a group of one sample gets advantage 0
    (its own mean), and a group with zero spread gets 0 too.  std is the population std: of the
    group (``scale="group"``, DDPO / GRPO) or of the whole batch (``"batch"``, as Dr. GRPO, Liu
    et al. 2025; the default here and in ``dpok.advantage_scale``).  Why ``batch``: with few
    samples per prompt and a graded reward, a group whose samples are all wrong but differ by a
    little (0.50 vs 0.75) is blown up to the same +-1 as a group with one real success, so most of
    the gradient is spent on near-ties.
    """
    rewards = rewards.float()
    if groups is None:
        return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    n = counts.float()
    sums = torch.zeros(len(counts), device=rewards.device).index_add_(0, inverse, rewards)
    mean = (sums / n)[inverse]
    if scale == "batch":
        return (rewards - mean) / (rewards.std(unbiased=False) + eps)
    sq = torch.zeros(len(counts), device=rewards.device).index_add_(0, inverse, (rewards - mean) ** 2)
    return (rewards - mean) / ((sq / n).sqrt()[inverse] + eps)


RewardWeighting = Literal["reward", "exp", "chi2", "threshold"]


def reward_weights(rewards: torch.Tensor, mode: RewardWeighting = "reward", temperature: float = 1.0,
                   threshold: float = 0.5) -> torch.Tensor:
    """Per-example weights w(r) >= 0 for reward-weighted likelihood (Lee et al. 2023, eq. 2).

    - ``reward``: w = max(r, 0), the paper's form (its reward predicts a {0, 1} label);
    - ``exp``: w = exp(r / T) normalised to mean 1 over the batch (reward-weighted regression; the
      weights Diffusion Controller derives for a KL regulariser, u = (r - nu) / T, the minimiser-
      preserving case);
    - ``chi2``: w = max(0, 1 + (r - mean r) / T), normalised to mean 1 (Diffusion Controller's
      weights for a Pearson chi^2 regulariser: linear in the reward, zero for the worst samples);
    - ``threshold``: w = 1[r > threshold], i.e. fine-tuning on accepted samples only
      (rejection sampling).
    """
    if mode == "reward":
        return rewards.clamp_min(0)
    if mode == "exp":
        w = torch.softmax(rewards / temperature, dim=0)
        return w * rewards.numel()
    if mode == "chi2":
        w = (1 + (rewards - rewards.mean()) / temperature).clamp_min(0)
        return w * rewards.numel() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    if mode == "threshold":
        return (rewards > threshold).to(rewards.dtype)
    raise ValueError(f"unknown reward weighting {mode!r}")


# ---------------------------------------------------------------------------------------------
# Flow matching (SD3, FLUX): the forward interpolation, the velocity target, the ODE's Euler step
# and Flow-GRPO's SDE, whose step Gaussian feeds gaussian_log_prob / gaussian_kl / step_divergence.


def flow_noised(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps, the rectified-flow interpolation (what diffusers'
    ``FlowMatchEulerDiscreteScheduler.scale_noise`` computes); ``sigma`` a scalar or (B,)."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def flow_velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v* = d x_sigma / d sigma = eps - x0.

    RWL on a flow model is Lee et al.'s eq. 2 with this loss: a reward-weighted
    ||v_theta(x_sigma, sigma) - (eps - x0)||^2 at a sigma drawn by the family's timestep sampling.
    With the weight an advantage this is AWM, advantage-weighted matching (Xue et al. 2025,
    arXiv 2509.25050): they show DDPO / Flow-GRPO's per-step likelihood is flow matching with
    noisy targets, and that weighting the pretraining loss on x0 by the advantage is a
    lower-variance policy gradient.
    """
    return eps - x0


def flow_x0_and_eps(velocity: torch.Tensor, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted clean sample x0_hat = x - sigma v and noise eps_hat = x + (1 - sigma) v, which
    invert :func:`flow_noised` when v = eps - x0 (the flow analogue of :func:`x0_and_eps`)."""
    s = _bcast(sigma, x)
    return x - s * velocity, x + (1 - s) * velocity


def flow_ode_step(velocity: torch.Tensor, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """The ODE's Euler step x' = x + v dt, dt = sigma' - sigma (diffusers'
    ``FlowMatchEulerDiscreteScheduler.step`` without stochastic sampling)."""
    return x + (_bcast(sigma_next, x) - _bcast(sigma, x)) * velocity


def flow_sde_std(sigma, sigma_next, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's diffusion coefficient s_sigma = a sqrt(sigma / (1 - sigma)) (not yet times
    sqrt(-dt)); ``sigma``, ``sigma_next`` scalars or (B,) tensors.

    At sigma = 1 (a schedule's first level: SD3's and FLUX's shifted schedules both start there)
    1 - sigma is 0; Flow-GRPO then divides by 1 - sigmas[1] instead, the schedule's second level,
    which is the step's own next level sigma' -- so this uses 1 - sigma' there and needs no schedule.
    """
    sigma = torch.as_tensor(sigma)
    sigma_next = torch.as_tensor(sigma_next, dtype=sigma.dtype, device=sigma.device)
    return noise_level * (sigma / (1 - torch.where(sigma == 1, sigma_next, sigma))).sqrt()


def flow_sde_step(velocity: torch.Tensor, x: torch.Tensor, sigma, sigma_next,
                  noise_level: float) -> StepGaussian:
    """Mean and std of Flow-GRPO's SDE step p(x' | x) from sigma to sigma' < sigma:

        mu  = x + v dt + (s_sigma^2 / (2 sigma)) (x + (1 - sigma) v) dt,  s_sigma = flow_sde_std(...)
        std = s_sigma sqrt(-dt),                                             x' = mu + std eps.

    x + (1 - sigma) v is eps_hat (:func:`flow_x0_and_eps`), and -eps_hat / sigma the score of
    x_sigma, so mu = x + (v - (s_sigma^2 / 2) score) dt: the reverse SDE whose marginals are the
    ODE's.  The policy's and the base model's steps from the same x share ``std`` and differ in the
    mean only, so :func:`gaussian_log_prob` gives the step log-prob and :func:`gaussian_kl` /
    :func:`step_divergence` the per-step divergence.  These *sum* over latent dimensions (this
    module's convention); Flow-GRPO's code averages its log-prob over dimensions and divides its
    KL by s_sigma^2 rather than std^2, i.e. its KL is this one times -dt / numel.

    ``noise_level`` a = 0 is the ODE: ``mean`` is exactly :func:`flow_ode_step` (the same
    operations; the SDE's correction term is not added) and ``std`` is 0, where the step's log-prob
    and KL are undefined (a point mass: the Gaussian formulas divide by zero and return inf/nan),
    so a sampler steps the ODE there (the deterministic tail) and scores only a > 0 steps.
    ``velocity`` and ``x`` should be float32: Flow-GRPO casts bf16 up because mu overflows.
    """
    s = _bcast(sigma, x)
    dt = _bcast(sigma_next, x) - s
    std_sde = _bcast(flow_sde_std(sigma, sigma_next, noise_level), x).to(x.dtype)
    mean = x + dt * velocity
    if noise_level != 0:
        mean = mean + std_sde**2 / (2 * s) * (x + (1 - s) * velocity) * dt
    return StepGaussian(mean=mean, std=std_sde * (-dt).sqrt())


# -- learning from preferences without a reward model (finetune.preference) ---------------------------
# e = the per-example training error of a model, the mean over (C, H, W) of its squared error to the
# target (DDPM's noise / v, a flow family's velocity eps - x0), at one noise draw; e_ref the same
# under the frozen base.  Both papers stand -(e - e_ref), times a constant folded into beta, in for
# the log-likelihood ratio log p_theta(x0 | c) / p_ref(x0 | c) of an image (its ELBO, one draw).


def diffusion_dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
                       beta: float, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO's per-pair loss (Wallace et al. 2023, eq. 14) -> (loss (P,), logit z (P,)).

        z    = -beta / 2 * ((e_w - e_l) - (e_ref_w - e_ref_l))
        loss = -log sigmoid(z)

    as the authors' code and diffusers' research project compute it (the 1/2 and the per-pixel mean
    are theirs; eq. 14's T omega(lambda_t) is folded into beta).  ``err_*`` (P,): the two images of
    each pair at the same noise and timestep, w the one the raters preferred.  ``target`` (P,):
    P(w preferred), 1 when None; a tie's 0.5 makes the loss the binary cross-entropy
    -(y log sigmoid(z) + (1 - y) log sigmoid(-z)), each order counted half.  z > 0: the trained
    model has moved towards w relative to l more than the base (the implicit reward's margin)."""
    z = -0.5 * beta * ((err_w - err_l) - (ref_err_w - ref_err_l))
    if target is None:
        return -torch.nn.functional.logsigmoid(z), z
    return -(target * torch.nn.functional.logsigmoid(z) + (1 - target) * torch.nn.functional.logsigmoid(-z)), z


def kto_reference_point(err: torch.Tensor, ref_err: torch.Tensor) -> torch.Tensor:
    """Diffusion-KTO's reference point z_ref (Li et al. 2024, eq. 8; the authors' code): the batch's
    mean implicit log-ratio mean(e_ref - e), floored at 0 and without a gradient, a scalar.  It
    estimates KL(p_theta || p_ref), which is never negative; KTO (Ethayarajh et al. 2024) estimates
    it the same way from its batch."""
    return (ref_err - err).mean().clamp_min(0).detach()


def diffusion_kto_loss(err: torch.Tensor, ref_err: torch.Tensor, target: torch.Tensor, beta: float,
                       reference_point: torch.Tensor, desirable_weight: float = 1.0,
                       undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-KTO's per-image loss (Li et al. 2024, eq. 7-8, the Kahneman-Tversky utility, their
    ``halo=sigmoid``) -> (loss (B,), the implicit reward margin beta (g - z_ref) (B,)).

        g    = e_ref - e                               (the implicit log-ratio, per image)
        loss = lambda_D (1 - sigmoid(beta (g - z_ref)))    an image judged good
             = lambda_U (1 - sigmoid(-beta (g - z_ref)))   an image judged bad

    maximising the utility sigmoid(+-beta (g - z_ref)): raise the likelihood of good images above
    the reference point, lower that of bad ones below it; the sigmoid saturates, so an image far on
    the right side stops pulling (the risk-averse gains, risk-seeking losses of prospect theory).
    ``target`` (B,): the share of raters who said good; 1 / 0 under majority aggregation, and a
    share in between mixes the two terms in proportion.  ``reference_point``: z_ref, a scalar
    (:func:`kto_reference_point`)."""
    margin = beta * (ref_err - err - reference_point)
    good = desirable_weight * (1 - torch.sigmoid(margin))
    bad = undesirable_weight * (1 - torch.sigmoid(-margin))
    return target * good + (1 - target) * bad, margin
