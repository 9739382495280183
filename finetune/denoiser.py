"""The per-family parts of fine-tuning, in one place (the seam of issue 72): how a family's prompts
become text conditioning (:class:`TextCond`, :func:`encode_prompts`), how its denoiser is called
(:class:`Denoiser`: a UNet, SD3's transformer, FLUX's transformer on packed latents), which
schedule it samples (:func:`make_schedule`: DDIM, or the flow SDE), how its latents decode and
encode (the SD3 / FLUX VAEs' shift factor), what its LoRA targets and which fine-tuning options it
refuses (:func:`check_finetune_options`).  DPOK's and RWL's phases, the policy and the sampler ask
this module and never test for a UNet.

Latents are kept unpacked everywhere, (B, C, h, w) with C the VAE's latent channels (16 for SD3 and
FLUX); FLUX's 2x2 packing into tokens happens inside its denoiser call only, so the trajectories,
log-probs and decoders are the same code for every family.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from core.errors import UserError
from core.families import Family, pipeline_family
from core.sampling import SamplingConfig, text_length
from finetune.config import FinetuneConfig, ModelConfig
from finetune.scheduler import DDIMSchedule, FlowSchedule


@dataclass(frozen=True)
class TextCond:
    """The text conditioning of B prompts: per-token embeddings (B, L, D), the pooled embedding
    (B, P) of SD3 / FLUX (None for SD) and FLUX's text position ids (L, 3) (shared by all rows)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    txt_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __getitem__(self, rows) -> TextCond:
        """The rows ``rows`` (an index tensor, array or slice) of every per-prompt tensor."""
        return replace(self, embeds=self.embeds[rows], pooled=None if self.pooled is None else self.pooled[rows])

    @property
    def device(self) -> torch.device:
        return self.embeds.device

    @staticmethod
    def cat(parts: list[TextCond]) -> TextCond:
        """The rows of ``parts`` one after another (e.g. [uncond; cond] for guidance)."""
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return replace(parts[0], embeds=torch.cat([p.embeds for p in parts]), pooled=pooled)


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device, max_sequence_length: int | None = None
                   ) -> tuple[TextCond, TextCond]:
    """(cond, uncond) text conditioning of ``prompts`` and of the empty prompt, each of len(prompts)
    rows, with the pipeline's own encoders: SD one CLIP; SD3 two CLIPs (pooled) and the T5 (zeros
    when the folder has none); FLUX CLIP pooled + T5.  FLUX.1 has no unconditional pass (distilled
    guidance, or none), so its uncond is cond itself, never run."""
    family = pipeline_family(pipe)
    n = len(prompts)
    t5 = text_length(family, max_sequence_length)  # the T5 tokens (None: the pipeline's default)
    if family.name == "sd":
        cond, uncond = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=True, negative_prompt=[""] * n)
        return TextCond(cond), TextCond(uncond)
    if family.name == "sd3":
        cond, uncond, pooled, pooled_u = pipe.encode_prompt(
            prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=[""] * n, **t5)
        return TextCond(cond, pooled), TextCond(uncond, pooled_u)
    embeds, pooled, txt_ids = pipe.encode_prompt(prompts, prompt_2=None, device=device, num_images_per_prompt=1, **t5)
    cond = TextCond(embeds, pooled, txt_ids)
    return cond, cond


class Denoiser:
    """A family's denoiser call: ``(model, x (B, C, h, w), t (B,) schedule timesteps, text, guidance
    scale)`` -> (the model's output (B, C, h, w) fp32, a side network's backbone outputs or None).
    ``guided(scale)``: whether the family runs classifier-free guidance, an unconditional and a
    conditional pass, at that scale."""

    def __init__(self, family: Family):
        self.family = family

    def guided(self, guidance_scale: float) -> bool:
        return self.family.guidance == "cfg" and guidance_scale != 1.0

    def __call__(self, model, x, t, text: TextCond, guidance_scale: float, eps_pre=None):
        raise NotImplementedError


class UNetDenoiser(Denoiser):
    """SD: unet(x, t, encoder_hidden_states), t the DDIM timestep; the output is eps or v."""

    def __call__(self, model, x, t, text, guidance_scale, eps_pre=None):
        dtype = next(model.parameters()).dtype
        extra = {} if eps_pre is None else {"eps_pre": eps_pre}
        res = model(x.to(dtype), t, encoder_hidden_states=text.embeds, **extra)
        return res.sample.float(), getattr(res, "eps_pre", None)


class SD3Denoiser(Denoiser):
    """SD3: transformer(hidden_states, timestep = sigma * 1000, encoder_hidden_states,
    pooled_projections), as StableDiffusion3Pipeline calls it; the output is the velocity."""

    def __call__(self, model, x, t, text, guidance_scale, eps_pre=None):
        dtype = next(model.parameters()).dtype
        # the timestep stays fp32, as the pipeline passes its scheduler's (bf16 would round 987.5 to 988)
        out = model(hidden_states=x.to(dtype), timestep=t.float(), encoder_hidden_states=text.embeds.to(dtype),
                    pooled_projections=text.pooled.to(dtype), return_dict=False)[0]
        return out.float(), None


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """FLUX's tokens: latents (B, C, h, w) -> (B, h/2 * w/2, 4C), each token 2x2 latent pixels
    (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """FLUX's image position ids (h/2 * w/2, 3): (0, row, column) of each token
    (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser(Denoiser):
    """FLUX: the latents packed into 2x2 tokens, timestep = sigma (the schedule's sigma * 1000 /
    1000, as FluxPipeline), image and text position ids, FLUX.1-dev's guidance embedding fed the
    guidance scale in ONE pass (guidance-distilled: no unconditional pass; a model without the
    embedding takes none), the output unpacked."""

    def __call__(self, model, x, t, text, guidance_scale, eps_pre=None):
        dtype = next(model.parameters()).dtype
        b, c, h, w = x.shape
        guidance = None
        if self.family.guidance == "distilled":
            guidance = torch.full((b,), float(guidance_scale), device=x.device, dtype=torch.float32)
        out = model(hidden_states=pack_latents(x.to(dtype)), timestep=(t / 1000).to(dtype), guidance=guidance,
                    pooled_projections=text.pooled.to(dtype), encoder_hidden_states=text.embeds.to(dtype),
                    txt_ids=text.txt_ids, img_ids=image_ids(h, w, x.device, dtype), return_dict=False)[0]
        return unpack_latents(out.float(), c, h, w), None


def denoiser_for(family: Family) -> Denoiser:
    return {"sd": UNetDenoiser, "sd3": SD3Denoiser, "flux": FluxDenoiser}[family.name](family)


def make_schedule(pipe, sampling: SamplingConfig, noise_level: float, latent_shape: tuple[int, int, int]
                  ) -> DDIMSchedule | FlowSchedule:
    """The stochastic schedule a run (or the step probe, :mod:`tools.probe`) samples: SD's DDIM with
    ``sampling.eta`` on the folder's noise schedule; a flow family's SDE at ``noise_level``
    (``dpok.noise_level``) on the levels its pipeline steps through at this image size (FLUX's
    dynamic shift counts the packed tokens, SD3's its patches)."""
    family, steps = pipeline_family(pipe), sampling.num_inference_steps
    if not family.flow:
        return DDIMSchedule.from_scheduler(pipe.scheduler, steps, sampling.eta)
    _, h, w = latent_shape
    patch = 2 if family.tiling == "pack2" else int(pipe.transformer.config.patch_size)
    return FlowSchedule.from_scheduler(pipe.scheduler, steps, noise_level, (h // patch) * (w // patch),
                                       linspace_sigmas=family.name == "flux")


def lora_targets(model: ModelConfig, family: Family) -> list[str]:
    """The modules a LoRA adapts: ``model.lora_targets``; left at its default (SD's attention
    projections), a flow family's own (core.families: its joint attention's add_* projections too)."""
    if family.flow and tuple(model.lora_targets) == ModelConfig.lora_targets:
        return list(family.lora_targets)
    return list(model.lora_targets)


def text_encoders(pipe) -> list[torch.nn.Module]:
    """The pipeline's text encoders that are there (SD3's T5 may be absent)."""
    return [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
            if m is not None]


def check_finetune_options(cfg: FinetuneConfig, family: Family) -> None:
    """Refuse, before anything is written, what fine-tuning does not do on a flow family: a side
    network (a UNet module, core.side), region-aware fine-tuning (not built for the flow families
    yet), DRaFT (finetune.draft: a DDIM chain), and a guidance scale given to a
    FLUX folder that takes none."""
    if not family.flow:
        return
    where = f"model.pipeline={cfg.model.pipeline} is a {family.title} folder"
    if cfg.method == "draft":
        raise UserError(f"{cfg.model.pipeline} is a {family.title} folder: method=draft differentiates a "
                        "Stable Diffusion UNet's DDIM chain, and a flow-matching chain is not built for it.",
                        "fine-tune a Stable Diffusion 1.x/2.x folder (StableDiffusionPipeline).")
    g = cfg.sampling.guidance_scale
    # A schnell-like FLUX (no guidance embedding) has neither classifier-free guidance (FLUX.1 runs no
    # unconditional pass) nor distilled guidance: a scale set for it would silently do nothing.  The
    # shapes-world default is not a request (it is the SD family's CFG weight) and is passed over.
    if family.guidance == "none" and g not in (1.0, SamplingConfig.guidance_scale):
        raise UserError(f"{where} without a guidance embedding (transformer/config.json: guidance_embeds false, "
                        f"schnell-like): it takes no guidance, neither classifier-free (FLUX.1 runs no "
                        f"unconditional pass) nor distilled, so sampling.guidance_scale={g:g} would change nothing.",
                        "set sampling.guidance_scale=1, or fine-tune a guidance-distilled folder "
                        "(FLUX.1-dev: guidance_embeds true) to train at a guidance value.")
    if cfg.model.parameterisation == "side":
        raise UserError(f"{where}, and model.parameterisation=side is not built for it: a side network is a "
                        "UNet module (core.side).", "use model.parameterisation=lora (a LoRA on the transformer's "
                        "attention projections) or model.parameterisation=full (every transformer weight).")
    if cfg.region.weight > 0:
        raise UserError(f"{where}, and region-aware fine-tuning (region.weight={cfg.region.weight:g}) is built for "
                        "Stable Diffusion 1.x/2.x only.", "set region.weight=0 for a flow model.")


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], fp32."""
    return decode_differentiable(vae, latents)


def decode_differentiable(vae, latents: torch.Tensor) -> torch.Tensor:
    """:func:`decode_latents` keeping the graph from the images back to ``latents`` where gradients
    are on (reward backpropagation, :mod:`finetune.draft`); the frozen VAE collects none itself.
    SD3's and FLUX's VAEs have a shift factor: their latents are (z - shift) * scale, so
    z = latents / scale + shift."""
    dtype = next(vae.parameters()).dtype
    shift = getattr(vae.config, "shift_factor", None)
    z = latents.to(dtype) / vae.config.scaling_factor
    if shift is not None:
        z = z + shift
    images = vae.decode(z).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> latents (posterior mean, as SD fine-tuning does), scaled
    (and shifted, SD3 / FLUX) as :func:`decode_latents` inverts."""
    dtype = next(vae.parameters()).dtype
    shift = getattr(vae.config, "shift_factor", None)
    out = []
    for i in range(0, len(images), 32):
        x = images[i:i + 32].to(vae.device, dtype) * 2 - 1
        z = vae.encode(x).latent_dist.mean.float()
        out.append((z if shift is None else z - shift) * vae.config.scaling_factor)
    return torch.cat(out)
