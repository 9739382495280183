"""Plain, seeded, batched sampling from any StableDiffusionPipeline (no log-probs; the RL sampler
with log-probs lives in finetune/).  Used by ``make generate``, evaluation and the demo.

By default it samples the chain fine-tuning trains: DDIM with ``sampling.eta`` on the folder's own
noise schedule (:func:`ddim_scheduler`), whatever kind of scheduler the folder ships (PNDM for
Stable Diffusion v1.5, Euler, ...); ``sampling.scheduler=pipeline`` samples with that scheduler
instead.  :meth:`SamplingConfig.settings` names the one used, for the generations rows and reports.

torch and diffusers are imported on first use, so that the config and settings types here (which
:mod:`data.generations` records) cost nothing to import."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated, Literal

from PIL import Image

from core.compile import CompileMode, resolve_compile, sampling_unet
from core.config import Bounds, NonNegativeInt, PositiveInt, Share
from core.errors import UserError
from core.families import Family, describe_flow, guidance_applied, pipeline_family


# Which sampler plain sampling uses: "ddim", the fine-tuning chain (DDIM with sampling.eta on the
# folder's noise schedule, core.sampling.ddim_scheduler); "pipeline", the folder's own scheduler as
# it is (its eta only where its step takes one).
SamplerChoice = Literal["ddim", "pipeline"]

# Stable Diffusion v1's DDIM settings (its own scheduler configs): what DDIM samples with when the
# pipeline's scheduler is another kind, whose spacing keys describe that other sampler.
SD_DDIM_SETTINGS = dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                        clip_sample=False, thresholding=False)


def ddim_scheduler(scheduler):
    """The ``DDIMScheduler`` that samples the fine-tuning chain on the noise schedule of a
    pipeline's ``scheduler``, and a sentence saying how it was built (None when ``scheduler`` is
    DDIM, taken as it is).

    Another kind's config (PNDM, Euler, Euler-ancestral, DDPM, LMS, DPM-Solver++) gives the model's
    noise schedule: num_train_timesteps, the betas, prediction_type, rescale_betas_zero_snr.  Its
    step-spacing keys belong to that sampler: it lacks set_alpha_to_one (DDIMScheduler's default,
    true, makes the last step deterministic), and Euler, LMS and DPM-Solver write
    timestep_spacing="linspace", DDPM "leading" with steps_offset=0, with either of which DDIM's last
    step goes from t=0 to alpha-bar(0) again: sigma = 0, no log-probability.  So DDIM takes Stable
    Diffusion's settings (SD_DDIM_SETTINGS), except "trailing" spacing for a config that asks for
    it or rescales to zero terminal SNR: such a model starts from pure noise at t=T-1 (Lin et al.
    2024), which leading spacing never visits.
    """
    from diffusers import DDIMScheduler

    cfg = scheduler.config
    if isinstance(scheduler, DDIMScheduler):
        return DDIMScheduler.from_config(cfg), None
    settings = dict(SD_DDIM_SETTINGS)
    if cfg.get("timestep_spacing") == "trailing" or cfg.get("rescale_betas_zero_snr", False):
        settings["timestep_spacing"] = "trailing"
    ddim = DDIMScheduler.from_config(cfg, **settings)
    note = (f"the pipeline's scheduler is {type(scheduler).__name__}; DDIM samples on its "
            f"noise schedule ({ddim.config.beta_schedule} betas, {ddim.config.prediction_type}"
            f"{', zero terminal SNR' if ddim.config.rescale_betas_zero_snr else ''}) with Stable Diffusion's "
            f"DDIM settings: set_alpha_to_one=false, steps_offset=1, timestep_spacing={settings['timestep_spacing']}.")
    return ddim, note


def takes_eta(scheduler) -> bool:
    """Whether ``scheduler``'s step takes DDIM's eta (diffusers' pipeline passes it only then)."""
    import inspect

    return "eta" in inspect.signature(scheduler.step).parameters


# The same names as accelerate's (and the fine-tuning config's) mixed_precision: "no" is fp32.
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]


def resolve_precision(mixed_precision: MixedPrecision, device) -> str:
    """``"no"``, ``"fp16"`` or ``"bf16"``: ``auto`` made concrete for ``device``, the same rule for
    fine-tuning (accelerate's mixed_precision) and plain sampling: bf16 on a CUDA GPU that has it,
    else fp32 ("no")."""
    if mixed_precision != "auto":
        return mixed_precision
    import torch  # imported on first use: config parsing stays fast

    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def precision_dtype(precision: str) -> "torch.dtype | None":
    """The torch dtype of a resolved precision name (``"fp16"``, ``"bf16"``); None for fp32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def sampling_dtype(mixed_precision: MixedPrecision, device) -> "torch.dtype | None":
    """The autocast dtype that plain sampling (``make generate``, ``make eval``) runs the UNet, VAE
    and text encoder in, or None for fp32; ``auto`` as :func:`resolve_precision`.  On a CPU with
    native bf16 (AVX512-BF16, AMX) ``bf16`` is faster too (what it changes in speed and in the
    oracle's figures: experiments/eval-precision).  The weights stay fp32: autocast runs matmuls
    and convolutions in bf16 and leaves the scheduler's arithmetic in fp32.  The resolved config
    saved beside a round or a report says which precision sampled it."""
    import torch

    kind = torch.device(device).type
    if mixed_precision == "fp16" and kind != "cuda":
        raise UserError(f"mixed_precision=fp16 needs a CUDA device (this one is {kind}).",
                        "use mixed_precision=bf16 or no (fp32), or auto.")
    return precision_dtype(resolve_precision(mixed_precision, device))


@dataclass(frozen=True)
class SamplerSettings:
    """How an image was sampled, as the generations table records it."""

    sampler: str  # the scheduler class that sampled it, e.g. DDIMScheduler
    num_inference_steps: int
    guidance_scale: float
    eta: float  # 0 where the sampler takes no eta (sampling.scheduler=pipeline with e.g. Euler)


# Classifier-free guidance weight w: u + w (c - u) of the unconditional and conditional
# predictions; 1 is the conditional prediction alone (no guidance).  Below 1 diffusers' pipeline
# does not guide at all while the fine-tuning sampler would, so it is refused.
GuidanceScale = Annotated[float, Bounds(low=1)]


@dataclass(frozen=True)
class SamplingConfig:
    """How every stage samples (``sampling.*`` of make generate, make eval, make finetune and make
    probe-steps): one config, so the same keys mean the same everywhere."""

    num_inference_steps: PositiveInt = 20  # DDIM steps of the chain
    # ddim: the chain fine-tuning trains (DDIM with eta on the folder's noise schedule), for every
    # stage; pipeline: make generate and make eval sample with the folder's own scheduler (PNDM,
    # Euler, ...), which fine-tuning cannot (its log-probs are DDIM's)
    scheduler: SamplerChoice = "ddim"
    # Guidance 5 with stochastic DDIM (eta 1) samples the shapes-world base model best
    # (experiments/sampling-defaults): eta 1 commits to one background for prompts that leave it
    # free, where eta 0 draws a washed-out average.  (eta 1 on a zero-terminal-SNR schedule needs
    # finite_ddim, below.)
    guidance_scale: GuidanceScale = 5.0
    eta: Share = 1.0  # DDIM eta: 0 deterministic; > 0 makes each step a Gaussian with a log-prob
    # images sampled together (x2 UNet rows when guided); the fine-tuning sampler splits or pads
    # its calls to it too, so that one compiled graph serves every stage
    batch_size: PositiveInt = 32
    # pixels, multiples of the VAE scale factor and 8; None: the pipeline's native size
    # (unet.sample_size * VAE factor); see image_size
    height: PositiveInt | None = None
    width: PositiveInt | None = None
    # torch.compile of the UNet (core.compile.sampling_unet: one compiled module per process and
    # architecture, every model's weights copied into it, every UNet call padded to a full batch's
    # rows, so one graph serves every batch).  auto: on with CUDA, off on the CPU (core.compile.
    # resolve_compile); off: eager.  The images agree with eager's up to float rounding, not bit
    # for bit.
    compile: CompileMode = "auto"
    # SD3 and FLUX: the T5 tokens the pipeline feeds (its max_sequence_length); None: the pipeline's
    # own default (SD3 256, FLUX 512).  An SD3 folder without its T5 gets that many zero tokens in its
    # place: shapes-flow is trained with 0 (its 12 CLIP tokens only, not 256 more), so its
    # stages set 0.  The SD family has no T5 and ignores it.
    max_sequence_length: NonNegativeInt | None = None

    def sampler(self, scheduler):
        """The scheduler plain sampling runs for a pipeline whose scheduler is ``scheduler``:
        :func:`ddim_scheduler`'s DDIM, or ``scheduler`` itself under ``scheduler=pipeline``; a DDIM
        kept finite (:func:`finite_ddim`)."""
        return finite_ddim(scheduler if self.scheduler == "pipeline" else ddim_scheduler(scheduler)[0])

    def settings(self, scheduler) -> SamplerSettings:
        """What sampling a pipeline whose scheduler is ``scheduler`` with this config records: the
        sampler actually run (:meth:`sampler`), and eta where that sampler takes one (else 0)."""
        used = self.sampler(scheduler)  # a DDIM's finite copy is named as DDIM
        name = "DDIMScheduler" if self.scheduler == "ddim" else type(scheduler).__name__
        return SamplerSettings(sampler=name, num_inference_steps=self.num_inference_steps,
                               guidance_scale=self.guidance_scale, eta=self.eta if takes_eta(used) else 0.0)

    def describe(self, scheduler=None) -> str:
        """The setting in words, naming the sampler run for a pipeline whose scheduler is
        ``scheduler``: e.g. "20 DDIM steps, guidance 5, eta 1", or under ``scheduler=pipeline`` "20
        EulerDiscreteScheduler steps (the pipeline's own scheduler), guidance 5, no eta" (with
        ``scheduler`` None, that scheduler is not named)."""
        n, g = self.num_inference_steps, f"guidance {self.guidance_scale:g}"
        if self.scheduler == "ddim":
            return f"{n} DDIM steps, {g}, eta {self.eta:g}"
        if scheduler is None:
            return f"{n} steps of the pipeline's own scheduler, {g}, eta {self.eta:g} where it takes one"
        eta = f"eta {self.eta:g}" if takes_eta(scheduler) else "no eta"
        return f"{n} {type(scheduler).__name__} steps (the pipeline's own scheduler), {g}, {eta}"


def sampler_settings(cfg: SamplingConfig, scheduler, family: Family) -> SamplerSettings:
    """What sampling a ``family`` pipeline whose scheduler is ``scheduler`` records: the SD
    family's :meth:`SamplingConfig.settings`; a flow family's ODE (no eta) and the guidance it
    applies (1 for a model without guidance)."""
    if not family.flow:
        return cfg.settings(scheduler)
    return SamplerSettings(sampler=type(scheduler).__name__, num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=guidance_applied(family, cfg.guidance_scale), eta=0.0)


def describe_sampling(cfg: SamplingConfig, scheduler, family: Family) -> str:
    """The setting in words for a ``family`` pipeline (the SD family: :meth:`SamplingConfig.describe`;
    a flow family: :func:`core.families.describe_flow`, which needs ``scheduler``)."""
    if not family.flow:
        return cfg.describe(scheduler)
    return describe_flow(family, scheduler, cfg.num_inference_steps, cfg.guidance_scale)


def image_size(height: int | None, width: int | None, sample_size, vae_scale_factor: int) -> tuple[int, int]:
    """(height, width) in pixels to sample or train at: the given ones, or the UNet's native size
    ``sample_size`` (latent pixels, an int or (h, w)) times ``vae_scale_factor``.

    Each must be a positive multiple of the VAE scale factor (the latents are size / factor) and of
    8, which diffusers' StableDiffusionPipeline checks, so that a fine-tuned model samples at the
    size it was trained at; for Stable Diffusion (factor 8) that is 8."""
    native_h, native_w = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    native = (native_h * vae_scale_factor, native_w * vae_scale_factor)
    step = math.lcm(vae_scale_factor, 8)
    size = (native[0] if height is None else height, native[1] if width is None else width)
    for name, value in zip(("height", "width"), size):
        if value <= 0 or value % step:
            raise UserError(
                f"{name}={value} pixels is not a positive multiple of {step} (the VAE's scale factor is "
                f"{vae_scale_factor}, and diffusers' pipeline needs multiples of 8).",
                f"set sampling.height and sampling.width to multiples of {step}, or leave them out for the "
                f"model's native {native[0]}x{native[1]}.")
    return size


def pipeline_image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """:func:`image_size` for a loaded pipeline of any family (its denoiser's native size)."""
    family = pipeline_family(pipe)
    denoiser = dict(getattr(pipe, family.denoiser).config)
    return image_size(height, width, *family.geometry(denoiser, pipe.vae_scale_factor))


def latent_shape(pipe, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of a loaded pipeline's VAE latents, the denoiser's input unpacked (FLUX packs 2x2 of
    them into a token), for images of (height, width) pixels (:func:`pipeline_image_size`)."""
    family = pipeline_family(pipe)
    factor = pipe.vae_scale_factor
    return family.latent_channels(dict(getattr(pipe, family.denoiser).config)), height // factor, width // factor


def finite_ddim(scheduler):
    """``scheduler`` unchanged, or, for a DDIM scheduler, a copy whose stochastic step stays finite
    on zero-terminal-SNR schedules.

    At alpha_bar_t = 0 (``rescale_betas_zero_snr``, the shapes model's first step t=999) DDIM's
    variance equals 1 - alpha_bar_prev exactly, so diffusers' sqrt(1 - alpha_bar_prev - sigma^2)
    takes the root of 0 +- 1 ulp, and the sign depends on the platform: with eta 1 every image was
    NaN (black) at 20 steps on an H100 machine's build, and at 25 or 30 steps on our CPUs.  The copy
    lowers the variance by the few ulps that make that root's argument >= 0 at eta 1, with the same
    torch ops as diffusers' step, so wherever diffusers' step was finite it is bit-identical (the
    RL sampler's own step clamps the same root to 0).
    """
    from diffusers import DDIMScheduler

    if not isinstance(scheduler, DDIMScheduler):
        return scheduler
    return _finite_ddim_class().from_config(scheduler.config)


@functools.cache
def _finite_ddim_class():
    import torch  # imported on first use: config parsing stays fast
    from diffusers import DDIMScheduler

    class FiniteDDIMScheduler(DDIMScheduler):
        def _get_variance(self, timestep, prev_timestep):
            variance = super()._get_variance(timestep, prev_timestep)
            abar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
            zero = torch.zeros_like(variance)
            for _ in range(16):  # 1-2 ulps in practice
                if bool(1 - abar_prev - (1.0 * variance ** 0.5) ** 2 >= 0):  # DDIMScheduler.step's root, eta 1
                    break
                variance = torch.nextafter(variance, zero)
            return variance

    return FiniteDDIMScheduler


def generate_images(pipe, prompts: list[str], seeds: list[int], cfg: SamplingConfig = SamplingConfig(),
                    progress=None, dtype=None) -> list[Image.Image]:
    """One image per (prompt, seed).  Each image has its own ``torch.Generator`` seeded with its
    seed, so an image does not depend on the batch it was drawn in.  ``dtype``: autocast dtype
    (:func:`sampling_dtype`), None for fp32."""
    import torch  # imported on first use: config parsing stays fast

    from core.side import is_side

    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    height, width = pipeline_image_size(pipe, cfg.height, cfg.width)
    family = pipeline_family(pipe)
    if family.flow:
        return _generate_flow(pipe, family, prompts, seeds, cfg, height, width, progress, dtype)
    out: list[Image.Image] = []
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    guided = cfg.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    rows = cfg.batch_size * (2 if guided else 1)  # every UNet call padded to a full batch's: one graph
    # a side network (core.side) samples eagerly: the process's compiled UNet is its backbone's architecture
    compiled = resolve_compile(cfg.compile, pipe.device) and not is_side(pipe.unet)
    scheduler, pipe.scheduler = pipe.scheduler, cfg.sampler(pipe.scheduler)
    unet = pipe.unet
    if compiled:
        pipe.unet = sampling_unet(unet, rows)
    try:
        with torch.no_grad(), torch.autocast(pipe.device.type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, len(prompts), cfg.batch_size):
                p = prompts[start:start + cfg.batch_size]
                g = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[start:start + cfg.batch_size]]
                result = pipe(p, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                              eta=cfg.eta, generator=g, height=height, width=width, output_type="pil")
                out.extend(result.images)
                if progress is not None:
                    progress.update(len(p))
    finally:
        pipe.scheduler, pipe.unet = scheduler, unet  # the caller's pipeline is left as it was
    return out


def text_length(family: Family, max_sequence_length: int | None) -> dict:
    """A flow pipeline's keyword for :attr:`SamplingConfig.max_sequence_length` (None: none, the
    pipeline's default), for its call and its ``encode_prompt``; 0 is refused for a family that reads
    the prompt's tokens from T5 alone (:attr:`core.families.Family.t5_only`)."""
    if max_sequence_length == 0 and family.t5_only:
        raise UserError(f"sampling.max_sequence_length=0 was given for a {family.title} pipeline, whose transformer "
                        "reads the prompt's tokens from T5 alone: 0 tokens would leave it no prompt.",
                        "leave max_sequence_length unset (FLUX's own 512) or give the length the model was "
                        "trained with; 0 is for an SD3 folder trained without T5, such as shapes-flow.")
    return {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}


def _generate_flow(pipe, family: Family, prompts: list[str], seeds: list[int], cfg: SamplingConfig,
                   height: int, width: int, progress, dtype) -> list[Image.Image]:
    """:func:`generate_images` for a flow family: the pipeline's own call, i.e. its
    FlowMatchEulerDiscreteScheduler ODE at its own shift, guidance as the family takes it (SD3:
    classifier-free; FLUX.1-dev: the distilled guidance embedding; schnell-like: none).  One
    generator per image, as for SD.  sampling.compile and eta do not apply (the compiled module is a
    UNet's; an ODE step has no noise)."""
    import torch

    out: list[Image.Image] = []
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    guidance = guidance_applied(family, cfg.guidance_scale)
    t5 = text_length(family, cfg.max_sequence_length)
    with torch.no_grad(), torch.autocast(pipe.device.type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(prompts), cfg.batch_size):
            p = prompts[start:start + cfg.batch_size]
            g = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[start:start + cfg.batch_size]]
            result = pipe(p, num_inference_steps=cfg.num_inference_steps, guidance_scale=guidance,
                          generator=g, height=height, width=width, output_type="pil", **t5)
            out.extend(result.images)
            if progress is not None:
                progress.update(len(p))
    return out
