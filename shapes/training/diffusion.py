"""The shapes-world text-to-image model: a small latent diffusion model in Stable Diffusion's format.

Components (all stock classes, saved as one ``StableDiffusionPipeline`` folder):

- tokenizer: :func:`shapes.tokenizer.build_tokenizer`;
- text encoder: ``CLIPTextModel`` (64 wide, 2 layers) trained from scratch jointly with the UNet
  (``text_init="scratch"``, the default: the text-to-image model then does not depend on the CLIP
  run), or initialised from the tiny CLIP's text tower and trained jointly (``text_init="clip"``).
  SD freezes its text encoder; ours is tiny and must learn the shapes vocabulary;
- VAE: :mod:`shapes.training.vae` (frozen here; latents are scaled by its scaling_factor);
- UNet: ``UNet2DConditionModel`` on 16x16x4 latents, cross-attention only at the 8x8 and 4x4
  levels (see ../shared/shapes-world-measurements.md for the speed table);
- scheduler: ``DDIMScheduler`` with v-prediction, "trailing" timestep spacing and the zero-terminal-
  SNR rescale of the betas (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed", Alg. 1): with epsilon-prediction and a schedule whose last alpha_bar is ~0, the first
  sampling step's x0 estimate divides by sqrt(alpha_bar) and saturates (measured: random background
  tints), so we predict v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022, eq. in sec. 4).

Loss: || v_theta(z_t, t, c) - v ||^2 with t uniform over the 1,000 training steps; classifier-free
guidance dropout replaces the prompt by "" with probability ``cfg_dropout`` (Ho & Salimans 2022).
Weights are an exponential moving average of the trained ones (saved, and used for sampling).

The training prompts follow :class:`~shapes.training.common.SkewConfig`: the train split
only, counts three and four rare; renders whose free attributes form a held-out pair are redrawn.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from core.sampling import SamplingConfig, generate_images
from core.schedules import learning_rate
from shapes.oracle import alignment_by_category, judge
from shapes.tokenizer import MAX_LENGTH, build_tokenizer, text_config_ids
from shapes.training.common import (Progress, SkewConfig, pick_device, render_pool, seed_everything,
                                    skewed_prompt_weights, to_unit, train_prompts)


@dataclass(frozen=True)
class UNetArch:
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # 16x16, 8x8, 4x4
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 16


@dataclass(frozen=True)
class TextArch:
    """Only used with ``text_init="scratch"`` (otherwise the CLIP text tower's shape is kept)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4


@dataclass(frozen=True)
class DenoiserTraining:
    """The training loop's settings both shapes-world text-to-image models share (this module's
    UNet and :mod:`shapes.training.flow`'s transformer)."""

    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # share of prompts replaced by "" (classifier-free guidance)
    pool_size: int = 30000  # renders, encoded to latents once
    seed: int = 2
    log_every: int = 200
    eval_every: int = 0  # >0: sample the train prompts every N steps and print their alignment
    device: str = "auto"


@dataclass(frozen=True)
class DiffusionConfig(DenoiserTraining):
    unet: UNetArch = field(default_factory=UNetArch)
    text: TextArch = field(default_factory=TextArch)
    text_init: Literal["clip", "scratch"] = "scratch"
    skew: SkewConfig = field(default_factory=SkewConfig)
    # 7000 steps at lr 1e-3 (cosine to 5 %): one-sample common-prompt alignment 0.22 / 0.47 / 0.69 / 0.72
    # at 1k / 2k / 3k / 4k steps; lr 5e-4 was at 0.21 / 0.34 after 1k / 2k (and 0.40 after a 3k-step run).
    steps: int = 7000


@dataclass(frozen=True)
class DiffusionTrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    n_params_unet: int
    n_params_text: int


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type="v_prediction", timestep_spacing="trailing",
                         rescale_betas_zero_snr=True, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def build_unet(arch: UNetArch, latent_size: int, latent_channels: int, cross_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        layers_per_block=arch.layers_per_block, block_out_channels=arch.block_out_channels,
        down_block_types=arch.down_block_types, up_block_types=arch.up_block_types,
        cross_attention_dim=cross_dim, attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.norm_num_groups)


def build_text_encoder(cfg: DiffusionConfig, tokenizer, clip_dir: str | Path | None):
    from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel

    if cfg.text_init == "clip":
        if clip_dir is None:
            raise ValueError("text_init='clip' needs the CLIP folder")
        clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True)
        text = CLIPTextModel(clip.config.text_config)
        text.load_state_dict(clip.text_model.state_dict())  # same layers, same names
        return text
    return CLIPTextModel(CLIPTextConfig(
        hidden_size=cfg.text.hidden, intermediate_size=4 * cfg.text.hidden,
        num_hidden_layers=cfg.text.layers, num_attention_heads=cfg.text.heads,
        **text_config_ids(tokenizer)))


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler or make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, C, h, w) of uint8 renders (N, H, W, 3), unscaled."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(to_unit(images[i:i + batch]).to(device)).latent_dist
        means.append(d.mean.cpu())
        stds.append(d.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def train_diffusion(cfg: DiffusionConfig, vae_dir: str | Path, out_dir: str | Path,
                    clip_dir: str | Path | None = None, progress: bool = True
                    ) -> DiffusionTrainResult:
    """Train the UNet (+ text encoder) on VAE latents of skewed renders; save the pipeline folder."""
    from diffusers import AutoencoderKL

    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    tok = build_tokenizer()
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(device).eval()
    vae.requires_grad_(False)
    text = build_text_encoder(cfg, tok, clip_dir).to(device)
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(cfg.unet, latent_size, vae.config.latent_channels,
                      text.config.hidden_size).to(device)
    sched = make_scheduler()
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)

    prompts = train_prompts()
    weights = skewed_prompt_weights(prompts, cfg.skew)
    pool = render_pool(prompts, weights, cfg.pool_size, seed=cfg.seed, size=vae.config.sample_size,
                       exclude_heldout_scenes=True, progress=progress)
    z_mean, z_std = encode_pool(vae, pool.images)
    scale = vae.config.scaling_factor
    # Token ids of every prompt and of "" (the unconditional prompt), padded to max length without
    # an attention mask, exactly as StableDiffusionPipeline.encode_prompt feeds them.
    ids = tok([p.text for p in prompts] + [""], padding="max_length", max_length=MAX_LENGTH,
              truncation=True, return_tensors="pt")["input_ids"].to(device)
    empty = len(prompts)
    prompt_index = torch.from_numpy(pool.prompt_index)

    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    ema_unet.requires_grad_(False)
    ema_text.requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = Progress("unet", cfg.steps, cfg.log_every, progress)
    unet.train()
    text.train()
    loss_v = float("nan")
    for step in range(cfg.steps):
        idx = torch.randint(len(z_mean), (cfg.batch_size,), generator=gen)
        z0 = (z_mean[idx] + z_std[idx] * torch.randn(z_mean[idx].shape, generator=gen)) * scale
        which = prompt_index[idx].clone()
        which[torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout] = empty
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        z0, eps, t = z0.to(device), eps.to(device), t.to(device)
        zt = sched.add_noise(z0, eps, t)  # sqrt(ab) z0 + sqrt(1 - ab) eps
        target = sched.get_velocity(z0, eps, t)  # sqrt(ab) eps - sqrt(1 - ab) z0
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.steps, cfg.warmup_steps, cfg.lr)  # warm-up, cosine to 5 %
        cond = text(ids[which.to(device)])[0]  # (B, 12, D) last hidden state, as the pipeline
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text, decay)
        loss_v = float(loss.detach())
        bar.step(step, loss=loss_v)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            quick_eval(make_pipeline(vae, ema_text, tok, ema_unet), step + 1, "unet")
    seconds = bar.close()
    out_dir = Path(out_dir)
    pipe = make_pipeline(vae.cpu(), ema_text.cpu(), tok, ema_unet.cpu())
    pipe.save_pretrained(out_dir)
    return DiffusionTrainResult(out_dir, cfg.steps, seconds, loss_v,
                                sum(p.numel() for p in unet.parameters()),
                                sum(p.numel() for p in text.parameters()))


def quick_eval(pipe, step: int, name: str, sampling: SamplingConfig = SamplingConfig()) -> None:
    """One sample per prompt on 1-2 object and 3-4 object train prompts; prints the oracle's
    alignment.  A training curve: seed 0 for every prompt at every step, not the evaluation's seeds."""
    prompts = train_prompts()
    a = _seed0_alignment(pipe, [p for p in prompts if p.count <= 2], sampling)
    r = _seed0_alignment(pipe, [p for p in prompts if p.count >= 3], sampling)
    print(f"[{name} eval] step {step} common overall {a['overall']:.2f} (count {a['count']:.2f} shape "
          f"{a['shape']:.2f} color {a['color']:.2f} bg {a['background']:.2f}) | rare overall {r['overall']:.2f}",
          file=sys.stdout, flush=True)


def _seed0_alignment(pipe, prompts, sampling: SamplingConfig) -> dict[str, float]:
    images = generate_images(pipe, [p.text for p in prompts], [0] * len(prompts), sampling)
    return alignment_by_category(prompts, [judge(im, p) for im, p in zip(images, prompts)])
