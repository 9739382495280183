"""Model families: one place that says, per kind of pipeline folder, how it is recognised, which
diffusers class loads it, how it samples and guides, how its size is read, and which modules a LoRA
targets.  Stages ask the family (:func:`folder_family`, :func:`pipeline_family`) instead of testing
for a UNet.

Families (recognised by ``model_index.json``'s ``_class_name``):

- ``sd``: ``StableDiffusionPipeline`` (SD-1.x / 2.x, the shapes-world model): a UNet, one CLIP text
  encoder; plain sampling runs the fine-tuning DDIM chain or the folder's own scheduler
  (``sampling.scheduler``, :class:`core.sampling.SamplingConfig`), real classifier-free guidance.
- ``sd3``: ``StableDiffusion3Pipeline``: an SD3 transformer, two CLIP encoders (pooled
  projections), T5 optional; the folder's ``FlowMatchEulerDiscreteScheduler`` ODE at its own shift,
  real classifier-free guidance with ``guidance_scale``.
- ``flux``: ``FluxPipeline``: a FLUX transformer, CLIP pooled + T5; the folder's flow ODE with the
  pipeline's own (dynamic, image-size dependent) shift.  FLUX.1-dev is guidance-distilled: it has
  no unconditional pass, ``guidance_scale`` is fed to its guidance embedding; a schnell-like folder
  (no ``guidance_embeds``) takes no guidance at all.

The pipelines decode latents themselves (SD3's and FLUX's VAEs have a shift factor; the pipelines
apply it).  Fine-tuning's per-family parts (text conditioning, the denoiser call, the DDIM or
flow-SDE schedule, latents) are :mod:`finetune.denoiser`'s; every family here fine-tunes
(:func:`require_finetunable` refuses one that does not).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from core.errors import UserError

FamilyName = Literal["sd", "sd3", "flux"]
# ddim: core.sampling's SD path (the fine-tuning chain, or the folder's scheduler under
# sampling.scheduler=pipeline); flow-ode: the folder's FlowMatchEulerDiscreteScheduler, Euler steps
# of the probability-flow ODE (no eta), at the pipeline's own shift
SamplerKind = Literal["ddim", "flow-ode"]
# cfg: u + w (c - u) of an unconditional and a conditional pass; distilled: w fed to a guidance
# embedding, one pass (FLUX.1-dev); none: the model takes no guidance (FLUX.1-schnell)
GuidanceKind = Literal["cfg", "distilled", "none"]
# How the denoiser tiles the latent: none (a UNet: one latent pixel each), patch (SD3: the
# transformer's patch_size x patch_size patches), pack2 (FLUX: the pipeline packs 2x2 latent pixels
# into one token)
Tiling = Literal["none", "patch", "pack2"]

PIPELINE_INDEX = "model_index.json"
FLUX_DEFAULT_SAMPLE_SIZE = 128  # latent pixels: FluxPipeline.default_sample_size (1024 px at the 8x VAE)


@dataclass(frozen=True)
class Family:
    name: FamilyName
    title: str  # in words, for messages and reports
    pipeline_class: str  # the diffusers pipeline class that loads the folder
    denoiser: Literal["unet", "transformer"]  # the denoiser's component (and sub-folder) name
    sampler: SamplerKind
    guidance: GuidanceKind
    tiling: Tiling
    # the modules a LoRA adapts (peft target_modules): the UNet's or the transformer's attention
    # projections, add_* for the flow transformers' joint attention (the text stream)
    lora_targets: tuple[str, ...]
    finetune: bool  # make finetune can train it (its sampler has log-probs: DDIM, or the flow SDE)
    # components a folder of the family may lack (loaded as None): SD3's T5 encoder and tokenizer
    optional: tuple[str, ...] = ()
    lineage: str = "Stable Diffusion"  # the model line, in messages ("the same ... family")
    # text encoders (each with its tokenizer): SD one CLIP; SD3 two CLIPs with pooled projections
    # (+ T5, optional); FLUX CLIP (pooled) + T5
    encoders: int = 1
    # the prompt's tokens reach the denoiser from T5 alone (its CLIP gives only a pooled vector), so
    # a T5 length of 0 leaves it no prompt: FLUX
    t5_only: bool = False
    # components never loaded (None): an SD folder's safety checker and its feature extractor
    # (research use; saves memory)
    skipped: tuple[str, ...] = ()

    def load_kwargs(self, index: dict) -> dict:
        """from_pretrained's keyword arguments for a folder whose model_index.json is ``index``:
        the skipped components as None, and the optional ones the folder lacks."""
        out: dict = {k: None for k in self.skipped}
        if "safety_checker" in self.skipped:
            out["requires_safety_checker"] = False
        out |= {k: None for k in self.optional if index.get(k) in (None, [None, None])}
        return out

    def folder_parts(self) -> str:
        """The sub-folders a complete folder has, for messages."""
        text = [f"text_encoder{s}/, tokenizer{s}/" for s in ([""] + [f"_{i}" for i in range(2, self.encoders + 1)])]
        return f"{self.denoiser}/, vae/, {', '.join(text)}, scheduler/, model_index.json"

    @property
    def denoiser_title(self) -> str:
        return "UNet" if self.denoiser == "unet" else "transformer"

    @property
    def flow(self) -> bool:
        return self.sampler == "flow-ode"

    def geometry(self, denoiser: dict, vae_factor: int) -> tuple[int | list[int], int]:
        """(native size in denoiser positions, pixels per position) from the denoiser's config and
        the VAE's scale factor: native pixels = the two multiplied, and a requested size must be a
        multiple of the second (:func:`core.sampling.image_size`)."""
        if self.tiling == "none":
            return denoiser["sample_size"], vae_factor
        if self.tiling == "patch":
            patch = int(denoiser.get("patch_size", 2))
            size = denoiser["sample_size"]
            return (size // patch if isinstance(size, int) else [s // patch for s in size]), vae_factor * patch
        return FLUX_DEFAULT_SAMPLE_SIZE // 2, vae_factor * 2

    def latent_channels(self, denoiser: dict) -> int:
        """The VAE latent channels the denoiser takes (FLUX's packed tokens hold 2x2 latent pixels)."""
        channels = int(denoiser.get("in_channels", 4))
        return channels // 4 if self.tiling == "pack2" else channels


SD = Family("sd", "Stable Diffusion 1.x/2.x", "StableDiffusionPipeline", "unet", "ddim", "cfg", "none",
            ("to_q", "to_k", "to_v", "to_out.0"), True, skipped=("safety_checker", "feature_extractor"))
SD3 = Family("sd3", "Stable Diffusion 3", "StableDiffusion3Pipeline", "transformer", "flow-ode", "cfg", "patch",
             ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"), True,
             ("text_encoder_3", "tokenizer_3"), "Stable Diffusion 3", encoders=2)
FLUX = Family("flux", "FLUX.1", "FluxPipeline", "transformer", "flow-ode", "distilled", "pack2",
              ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"), True,
              lineage="FLUX", encoders=2, t5_only=True)
FAMILIES: dict[str, Family] = {f.pipeline_class: f for f in (SD, SD3, FLUX)}


def _video(name: str) -> bool:
    return any(w in name for w in ("Video", "AnimateDiff", "Wan", "LTX", "Mochi", "Latte", "Allegro"))


def family_of_class(name: str | None, where: str, guidance_embeds: bool = True) -> Family:
    """The family of a pipeline class name (``model_index.json``'s ``_class_name``); an unknown or
    video pipeline is a :class:`UserError` naming ``where``."""
    known = ", ".join(f"{f.pipeline_class} ({f.title})" for f in FAMILIES.values())
    if name is not None and _video(name):
        raise UserError(f"{where} is a {name} folder, a video model; this project samples and aligns "
                        "text-to-image models.", f"pass a text-to-image pipeline folder: {known}.")
    family = FAMILIES.get(name or "")
    if family is None:
        raise UserError(f"{where} is a {name or 'pipeline without a _class_name'} folder, a model family this "
                        "project does not know.", f"pass a pipeline folder of a supported family: {known}.")
    if family is FLUX and not guidance_embeds:
        family = replace(family, guidance="none")
    return family


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"could not read {path}: {e}", "check that the pipeline folder is complete.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds no JSON object.", "check that the pipeline folder is complete.")
    return data


def folder_family(path: str | os.PathLike) -> Family:
    """The family of a pipeline folder, from its ``model_index.json`` (and, for FLUX, whether its
    transformer has a guidance embedding), without loading weights.  An unsupported folder is a
    :class:`UserError` (before anything is loaded or written)."""
    path = Path(path)
    name = _read_json(path / PIPELINE_INDEX).get("_class_name")
    embeds = True
    if name == FLUX.pipeline_class:
        embeds = bool(_read_json(path / "transformer" / "config.json").get("guidance_embeds", False))
    return family_of_class(name, str(path), embeds)


def pipeline_family(pipe) -> Family:
    """The family of a loaded pipeline."""
    embeds = True
    if type(pipe).__name__ == FLUX.pipeline_class:
        embeds = bool(getattr(pipe.transformer.config, "guidance_embeds", False))
    return family_of_class(type(pipe).__name__, f"the pipeline {type(pipe).__name__}", embeds)


def require_finetunable(path: str | os.PathLike) -> Family:
    """The family of the base folder ``make finetune`` trains; one without fine-tuning is refused."""
    family = folder_family(path)
    if not family.finetune:
        raise UserError(f"{path} is a {family.title} folder ({family.pipeline_class}), which make finetune "
                        "cannot train yet.", "fine-tune a folder of a fine-tunable family; this one runs through "
                        "make generate and make eval.")
    return family


def shift_words(scheduler) -> str:
    """A flow scheduler's shift in words: its fixed shift, or FLUX's resolution-dependent one."""
    cfg = scheduler.config
    if cfg.get("use_dynamic_shifting", False):
        return (f"dynamic shift (mu from the image's token count, {cfg.get('base_shift', 0.5):g} at "
                f"{cfg.get('base_image_seq_len', 256)} to {cfg.get('max_shift', 1.15):g} at "
                f"{cfg.get('max_image_seq_len', 4096)} tokens)")
    return f"shift {float(cfg.get('shift', 1.0)):.1f}"


def guidance_applied(family: Family, guidance_scale: float) -> float:
    """The guidance weight a family's sampling actually applies: none takes 1 (no guidance)."""
    return 1.0 if family.guidance == "none" else guidance_scale


def guidance_words(family: Family, guidance_scale: float) -> str:
    if family.guidance == "none":
        return "no guidance (the model has no guidance embedding)"
    if family.guidance == "distilled":
        return f"distilled guidance {guidance_scale:g} (the guidance embedding; no unconditional pass)"
    return f"guidance {guidance_scale:g}"


def describe_flow(family: Family, scheduler, steps: int, guidance_scale: float) -> str:
    """e.g. "FlowMatchEulerDiscreteScheduler ODE, 8 steps, shift 3.0, guidance 5"."""
    return (f"{type(scheduler).__name__} ODE, {steps} steps, {shift_words(scheduler)}, "
            f"{guidance_words(family, guidance_scale)}")
