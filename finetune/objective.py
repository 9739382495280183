"""The likelihood surrogate a fine-tuning method weights (RWL, :mod:`finetune.rwl`; AWM,
:mod:`finetune.awm`), per family: SD's denoising loss (:class:`DenoisingObjective`) or a flow
family's flow-matching loss (:class:`finetune.flow_rwl.FlowMatchingObjective`), each with
``draw`` (noise and training timesteps / levels), ``predict`` (a model's output and its target)
and ``loss``; :func:`training_objective` picks the pipeline's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.families import pipeline_family
from finetune.denoiser import TextCond
from finetune.flow_rwl import FlowMatchingObjective
from finetune.policy import base_policy
from finetune.region import keep_loss


class DenoisingObjective:
    """SD's per-example loss, -log p_theta(x | z) up to constants: the denoising loss (DDPM eq. 14)
    at DDPM training timesteps of the folder's noise schedule (:meth:`draw`, :meth:`predict`,
    :meth:`loss`).  A flow family's is :class:`finetune.flow_rwl.FlowMatchingObjective`, with the
    same three methods; :func:`training_objective` picks the family's."""

    def __init__(self, scheduler):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler.config)

    def draw(self, n: int, latent_shape: tuple[int, ...], gen: torch.Generator, device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise (n, C, h, w) and training timesteps (n,) of ``n`` examples' losses, drawn for a
        whole batch before it is cut into micro-batches, so that any cut sees the same draws."""
        noise = torch.randn((n, *latent_shape), generator=gen, device=device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=gen, device=device)
        return noise, t

    def predict(self, run, unet, latents: torch.Tensor, cond: TextCond, uncond: TextCond | None, noise: torch.Tensor,
                t: torch.Tensor, guidance_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(``unet``'s output, its target), each (B, C, h, w) fp32, at x_t = the latents noised to
        the training timesteps ``t`` (B,) with ``noise``: guided (u + w (c - u)) when
        ``guidance_scale`` > 1 (``uncond`` needed then)."""
        sched = self.scheduler
        x0 = latents.to(run.device)
        x_t = sched.add_noise(x0, noise, t)
        ptype = sched.config.prediction_type
        target = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t), "sample": x0}[ptype]
        dtype = next(unet.parameters()).dtype
        if guidance_scale > 1:
            both = unet(torch.cat([x_t, x_t]).to(dtype), torch.cat([t, t]),
                        encoder_hidden_states=TextCond.cat([uncond, cond]).embeds).sample.float()
            u, c = both.chunk(2)
            return u + guidance_scale * (c - u), target
        return unet(x_t.to(dtype), t, encoder_hidden_states=cond.embeds).sample.float(), target

    def loss(self, run, latents: torch.Tensor, cond: TextCond, uncond: TextCond | None, noise: torch.Tensor,
             t: torch.Tensor, guidance_scale: float = 1.0, keep: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example denoising loss (B,): MSE over (C, h, w) between the UNet output and its target
        at the training timesteps ``t`` (B,) with ``noise`` (B, C, h, w) (:meth:`draw`);
        ``cond`` / ``uncond`` (B rows): the prompts' and the empty prompt's text conditioning
        (``uncond`` only for guidance).  With ``keep`` (B, 1, h, w) bool, also region-aware RWL's
        term (B,): the output held to the base model's on the kept cells
        (:func:`finetune.region.keep_loss`); else None.

        ``guidance_scale`` > 1 puts the loss on the classifier-free-guided output
        u + w (c - u) (u, c: unconditional and conditional outputs), the prediction the sampler uses.
        Fitting the conditional output alone to images the *guided* sampler drew teaches c to overshoot,
        and sampling with guidance then overshoots again: colours drift off the palette within a few
        hundred steps (measured in the shapes world)."""
        pred, target = self.predict(run, run.comps.unet, latents, cond, uncond, noise, t, guidance_scale)
        loss = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
        if keep is None:
            return loss, None
        with torch.no_grad(), base_policy(run.policy) as base:
            base_pred = self.predict(run, base.unet, latents, cond, uncond, noise, t, guidance_scale)[0]
        return loss, keep_loss(pred, base_pred, keep.to(run.device))


def training_objective(pipe) -> DenoisingObjective | FlowMatchingObjective:
    """The likelihood surrogate RWL and AWM weight for ``pipe``'s family: SD's denoising loss, or a flow
    family's flow-matching loss at its own scheduler's noise levels."""
    return FlowMatchingObjective(pipe.scheduler) if pipeline_family(pipe).flow else DenoisingObjective(pipe.scheduler)
