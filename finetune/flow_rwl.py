"""RWL's per-example loss on a flow-matching family (SD3, FLUX): Lee et al.'s eq. 2 with the
flow-matching loss in place of the denoising loss,

    l(x0, z) = || v_theta(x_sigma, sigma, z) - (eps - x0) ||^2,   x_sigma = (1 - sigma) x0 + sigma eps,

at a noise level sigma drawn as the family's training draws it (:meth:`FlowMatchingObjective.draw`), weighted
by the reward w(r) on D_model and by 1 (times beta) on D_pre, as :mod:`finetune.rwl` weights the
SD family's denoising loss.  With the weight an advantage this is AWM, advantage-weighted matching
(Xue et al. 2025, arXiv 2509.25050): the pre-training loss on the policy's own samples weighted by
their advantage is a lower-variance policy gradient than DDPO's / Flow-GRPO's per-step likelihood
ratio; RWL's reward weights are the non-negative, offline case (finetune.rl_math.flow_velocity_target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.families import pipeline_family
from finetune.denoiser import TextCond, denoiser_for
from finetune.rl_math import flow_noised, flow_velocity_target


class FlowMatchingObjective:
    """RWL's per-example loss on a flow family (the module docstring), with the methods of
    :class:`finetune.objective.DenoisingObjective`: :meth:`draw` the noise and noise levels,
    :meth:`predict`, :meth:`loss`.
    ``scheduler``: the folder's FlowMatchEulerDiscreteScheduler, copied (training sets no timesteps
    on the pipeline's own)."""

    def __init__(self, scheduler):
        self.scheduler = type(scheduler).from_config(scheduler.config)

    def draw(self, n: int, latent_shape: tuple[int, ...], gen: torch.Generator, device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise (n, C, h, w) and noise levels sigma (n,) of ``n`` examples, as SD3's training
        draws them (diffusers' train_dreambooth_sd3 / _flux, weighting_scheme=logit_normal, mean 0,
        std 1): u = sigmoid(N(0, 1)), the training timestep index floor(u * 1000), sigma the training
        scheduler's level there (SD3's levels are shifted by its shift 3, FLUX's config shifts at
        sampling time only, so its training levels are u's own).  Logit-normal puts most draws at
        the middle levels, where the velocity is hardest to predict (Esser et al. 2024, SD3's paper,
        section 3.1)."""
        noise = torch.randn((n, *latent_shape), generator=gen, device=device)
        u = torch.sigmoid(torch.randn((n,), generator=gen, device=device))
        index = (u * self.scheduler.config.num_train_timesteps).long().clamp_max(len(self.scheduler.sigmas) - 1)
        return noise, self.scheduler.sigmas.to(device)[index].float()

    def predict(self, run, model, latents: torch.Tensor, cond: TextCond, uncond: TextCond | None,
                noise: torch.Tensor, sigma: torch.Tensor, guidance_scale: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``model``'s velocity, its target eps - x0), each (B, C, h, w) fp32, at x_sigma = (1 -
        sigma) x0 + sigma eps.  ``guidance_scale``: SD3 predicts the classifier-free-guided velocity
        u + w (c - u) (the prediction its sampler uses, as the SD family's ``rwl.guided_loss``;
        ``uncond`` needed then); FLUX.1-dev's guidance embedding is fed ``sampling.guidance_scale``,
        the value it samples at, on D_model and D_pre alike (as diffusers' FLUX DreamBooth trains at
        one guidance value)."""
        family = pipeline_family(run.comps.pipe)
        if family.guidance == "distilled":
            guidance_scale = run.cfg.sampling.guidance_scale
        denoiser = denoiser_for(family)
        x0 = latents.to(run.device)
        x_t = flow_noised(x0, noise, sigma)
        t = sigma * 1000  # the schedule's timesteps: SD3's time input, FLUX's divides by 1000
        if uncond is not None and denoiser.guided(guidance_scale):
            both = denoiser(model, torch.cat([x_t, x_t]), torch.cat([t, t]), TextCond.cat([uncond, cond]),
                            guidance_scale)[0]
            u, c = both.chunk(2)
            pred = u + guidance_scale * (c - u)
        else:
            pred = denoiser(model, x_t, t, cond, guidance_scale)[0]
        return pred, flow_velocity_target(x0, noise)

    def loss(self, run, latents: torch.Tensor, cond: TextCond, uncond: TextCond | None, noise: torch.Tensor,
             sigma: torch.Tensor, guidance_scale: float = 1.0, keep: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, None]:
        """(per-example flow-matching loss (B,), None): the MSE over (C, h, w) between the trained
        transformer's velocity (:meth:`predict`) and the target; no keep term (region-aware
        fine-tuning refuses flow families, so ``keep`` is always None)."""
        pred, target = self.predict(run, run.comps.unet, latents, cond, uncond, noise, sigma, guidance_scale)
        return F.mse_loss(pred, target, reduction="none").flatten(1).mean(1), None
