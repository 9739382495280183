"""Advantage Weighted Matching (AWM; Xue et al. 2025, arXiv 2509.25050; Flow-Factory's ``awm``
trainer): the update phase of a DPOK round with ``dpok.update=awm``, in place of the clipped
policy gradient (:func:`finetune.dpok._update`).

Each of the round's images x0 is noised afresh ``dpok.awm_draws`` times, at noise levels drawn as
the family's pre-training draws them (:mod:`finetune.objective`: SD's DDPM timesteps, a flow
family's logit-normal sigma), and the pre-training loss l = || f_theta(x_t) - target ||^2 (the
velocity eps - x0, or SD's eps / v) is weighted by the image's advantage A:

    loss = mean_i A_i l_i + gamma mean_i || f_theta(x_t) - f_base(x_t) ||^2,   gamma = dpok.awm_anchor.

With the denoising loss as the surrogate of -log p_theta(x0), A l is the policy gradient's
objective on whole images: no per-step log-probs, so training is decoupled from the sampler (any
chain draws the images; here DPOK's own, window and tail).  A < 0 pushes the prediction away from
the image's target without bound; the anchor (ORW-CFM-W2's regulariser: the squared distance of
the two velocity fields bounds the W2 distance of the two models) holds it near the base model,
as Flow-Factory's AWM holds it with a KL to an EMA of the policy and a clipped ratio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from finetune.objective import training_objective
from finetune.policy import base_policy
from finetune.run import Run
from finetune.sampler import Trajectory


def awm_terms(run: Run, objective, x0: torch.Tensor, cond, uncond, noise: torch.Tensor, t: torch.Tensor,
              adv: torch.Tensor, guidance_scale: float, anchor: float) -> tuple[torch.Tensor, ...]:
    """The AWM loss of B examples (the module docstring) and its parts, each a scalar: (weighted
    matching loss mean(A l), mean matching loss, mean drift ||f_theta - f_base||^2, total loss).
    x0 / noise (B, C, h, w), t (B,) the objective's timesteps or levels, adv (B,)."""
    pred, target = objective.predict(run, run.comps.unet, x0, cond, uncond, noise, t, guidance_scale)
    matching = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)  # (B,)
    with torch.no_grad(), base_policy(run.policy) as base:
        ref = objective.predict(run, base.unet, x0, cond, uncond, noise, t, guidance_scale)[0]
    drift = (pred - ref).pow(2).flatten(1).mean(1)  # (B,)
    weighted = (adv * matching).mean()
    return weighted, matching.mean(), drift.mean(), weighted + anchor * drift.mean()


def awm_update(run: Run, traj: Trajectory, adv: torch.Tensor, rng: np.random.Generator) -> dict:
    """AWM's update phase on a round's trajectories: ``adv`` (B,) each image's advantage; its
    ``awm_draws`` noise draws per image in a random order, ``minibatch_size`` examples an optimizer
    step.  Returns the round's means: ``policy_loss`` (mean A l), ``matching`` (mean l), ``drift``,
    ``loss``, ``grad_norm``; the policy-gradient statistics (kl, clip_fraction, approx_kl) are 0."""
    cfg, d = run.cfg, run.cfg.dpok
    objective = training_objective(run.comps.pipe)
    x0 = traj.final_latents
    rows = np.repeat(np.arange(traj.batch_size), d.awm_draws)
    gen = torch.Generator(run.device).manual_seed(int(rng.integers(2**62)))  # from the round's seed
    noise, t = objective.draw(len(rows), run.latent_shape, gen, run.device)
    guidance = cfg.sampling.guidance_scale
    run.comps.unet.train()

    def terms(items: np.ndarray) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(items, device=run.device)
        r = torch.as_tensor(rows[items], device=run.device)
        with run.accelerator.autocast():
            return awm_terms(run, objective, x0[r], traj.prompt_embeds[r], traj.negative_embeds[r], noise[idx], t[idx],
                             adv[r], guidance, d.awm_anchor)

    out = run.minibatch_pass(len(rows), rng, ("policy_loss", "matching", "drift", "loss"), terms)
    out.update(kl=0.0, clip_fraction=0.0, approx_kl=0.0)
    return out
