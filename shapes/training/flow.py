"""shapes-flow: the shapes world's flow-matching text-to-image model, in Stable Diffusion 3's format.

Components (all stock classes, saved as one ``StableDiffusion3Pipeline`` folder):

- tokenizers: :func:`shapes.tokenizer.build_tokenizer`, twice (SD3 has a tokenizer per CLIP);
- text encoders: two ``CLIPTextModelWithProjection`` (``text``), trained from scratch jointly with the
  transformer.  SD3 feeds the transformer their last-but-one hidden states side by side (B, 12, 2D)
  and their pooled projections side by side (B, 2P);
- no T5: SD3's third encoder is dropped (``text_encoder_3``/``tokenizer_3`` null in model_index.json,
  as a user drops it with ``from_pretrained(dir, text_encoder_3=None, tokenizer_3=None)``).  The
  pipeline puts ``max_sequence_length`` zero tokens in its place; the model is trained with 0 of them
  (CLIP tokens only), so every stage samples it with ``sampling.max_sequence_length=0``
  (core.sampling.SamplingConfig): 256 zero tokens would make the text stream 268 tokens instead of 12;
- VAE: shapes-sd's (:mod:`shapes.training.vae`, frozen), its config given SD3's ``shift_factor``
  (the latent mean) and a ``scaling_factor`` of 1 / the std about it, as SD3's VAE has both;
- transformer: ``SD3Transformer2DModel`` on the 16x16x4 latents in 2x2 patches (64 image tokens);
- scheduler: ``FlowMatchEulerDiscreteScheduler`` at ``shift`` (SD3's 3.0 is for 4096 image tokens;
  a 64-token image needs none: Esser et al. 2024, sec. 5.3.2, scale the shift with resolution).

Loss, rectified flow (Esser et al. 2024, eq. 1-3 with the velocity target):
|| v_theta(x_sigma, sigma, c) - (eps - x0) ||^2, x_sigma = (1 - sigma) x0 + sigma eps, sigma drawn
logit-normal (mean 0, std 1; the paper's best, sec. 3.1) and mapped through the scheduler's shift,
as diffusers' train_dreambooth_sd3 draws it.  Classifier-free-guidance dropout replaces the prompt by
"" (Ho & Salimans 2022).  Weights are an exponential moving average of the trained ones.

Training data: :mod:`shapes.training.diffusion`'s, with the same deliberate skew.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.sampling import SamplingConfig
from core.schedules import learning_rate
from shapes.tokenizer import build_tokenizer, text_config_ids
from shapes.training.common import (Progress, SkewConfig, pick_device, render_pool, seed_everything,
                                    skewed_prompt_weights, train_prompts)
from shapes.training.diffusion import DenoiserTraining, TextArch, ema_update, encode_pool, quick_eval

# How shapes-flow is sampled: no T5 tokens (see the module docstring); the rest as shapes-sd.
FLOW_SAMPLING = SamplingConfig(max_sequence_length=0)


@dataclass(frozen=True)
class TransformerArch:
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32  # width = heads x head dim
    patch_size: int = 2
    # the position table's patches per side: 2x the 64-px image's 8, so 128-px images fit
    pos_embed_max_size: int = 16


@dataclass(frozen=True)
class FlowConfig(DenoiserTraining):
    transformer: TransformerArch = field(default_factory=TransformerArch)
    # three layers: SD3 takes the last-but-one hidden state, so two of them shape the tokens
    text: TextArch = field(default_factory=lambda: TextArch(layers=3))
    skew: SkewConfig = field(default_factory=SkewConfig)
    shift: float = 1.0  # the scheduler's (training and sampling) shift of the noise levels
    steps: int = 5000


@dataclass(frozen=True)
class FlowTrainResult:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    n_params_transformer: int
    n_params_text: int


def build_text_encoder(arch: TextArch, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=arch.hidden, intermediate_size=4 * arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, projection_dim=arch.hidden, **text_config_ids(tokenizer)))


def build_transformer(arch: TransformerArch, latent_size: int, latent_channels: int, text_width: int):
    """``text_width``: the two CLIPs' widths added (the joint attention's input; SD3's T5 width,
    which the CLIP tokens are zero-padded to, so with no T5 it is the CLIPs' own)."""
    from diffusers import SD3Transformer2DModel

    width = arch.num_attention_heads * arch.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=latent_size, patch_size=arch.patch_size, in_channels=latent_channels,
        out_channels=latent_channels, num_layers=arch.num_layers, attention_head_dim=arch.attention_head_dim,
        num_attention_heads=arch.num_attention_heads, joint_attention_dim=text_width,
        caption_projection_dim=width, pooled_projection_dim=text_width, pos_embed_max_size=arch.pos_embed_max_size)


@torch.no_grad()
def adaln_zero_(transformer) -> None:
    """DiT's adaLN-Zero initialisation (Peebles & Xie 2023, sec. 3.2): every block's modulation
    (shift, scale, gate) and the output layer start at zero, so each block starts as the identity
    and the model's first prediction is 0.  diffusers builds SD3's transformer with PyTorch's
    default initialisation, which is meant to be overwritten by pretrained weights."""
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and (name.endswith(("norm1.linear", "norm1_context.linear"))
                                                    or name in ("norm_out.linear", "proj_out")):
            module.weight.zero_()
            module.bias.zero_()


def make_scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def make_pipeline(vae, text, text_2, tokenizer, transformer, shift: float):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=make_scheduler(shift), vae=vae,
                                    text_encoder=text, tokenizer=tokenizer, text_encoder_2=text_2,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_flow(cfg: FlowConfig, vae_dir: str | Path, out_dir: str | Path, progress: bool = True) -> FlowTrainResult:
    """Train the transformer (+ both text encoders) on VAE latents of skewed renders; save the
    StableDiffusion3Pipeline folder in ``out_dir``."""
    from diffusers import AutoencoderKL

    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    tok = build_tokenizer()
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(device).eval()
    vae.requires_grad_(False)
    text, text_2 = build_text_encoder(cfg.text, tok).to(device), build_text_encoder(cfg.text, tok).to(device)
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = build_transformer(cfg.transformer, latent_size, vae.config.latent_channels,
                                    2 * cfg.text.hidden).to(device)
    adaln_zero_(transformer)
    sched = make_scheduler(cfg.shift)

    prompts = train_prompts()
    weights = skewed_prompt_weights(prompts, cfg.skew)
    pool = render_pool(prompts, weights, cfg.pool_size, seed=cfg.seed, size=vae.config.sample_size,
                       exclude_heldout_scenes=True, progress=progress)
    z_mean, z_std = encode_pool(vae, pool.images)
    # SD3's latents are (z - shift_factor) * scaling_factor: zero mean, unit std over the pool
    shift_factor = float(z_mean.mean())
    scaling_factor = float(1.0 / (z_mean - shift_factor).std())
    vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)
    texts = [p.text for p in prompts] + [""]
    empty = len(prompts)
    prompt_index = torch.from_numpy(pool.prompt_index)
    # the pipeline encodes the prompts, as it will when sampling (one code path for the conditioning)
    pipe = make_pipeline(vae, text, text_2, tok, transformer, cfg.shift)

    params = [p for m in (transformer, text, text_2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    emas = [copy.deepcopy(m).eval().requires_grad_(False) for m in (transformer, text, text_2)]
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = Progress("flow", cfg.steps, cfg.log_every, progress)
    for m in (transformer, text, text_2):
        m.train()
    loss_v = float("nan")
    for step in range(cfg.steps):
        idx = torch.randint(len(z_mean), (cfg.batch_size,), generator=gen)
        z = z_mean[idx] + z_std[idx] * torch.randn(z_mean[idx].shape, generator=gen)
        x0 = (z - shift_factor) * scaling_factor
        which = prompt_index[idx].clone()
        which[torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout] = empty
        # sigma: u = sigmoid(N(0, 1)), the scheduler's (shifted) level at index floor(u * 1000)
        u = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen))
        sigma = sched.sigmas[(u * sched.config.num_train_timesteps).long().clamp_max(len(sched.sigmas) - 1)]
        eps = torch.randn(x0.shape, generator=gen)
        x0, eps, sigma = x0.to(device), eps.to(device), sigma.to(device)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * eps
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg.steps, cfg.warmup_steps, cfg.lr)  # warm-up, cosine to 5 %
        embeds, _, pooled, _ = pipe.encode_prompt([texts[i] for i in which.tolist()], prompt_2=None, prompt_3=None,
                                                  device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=FLOW_SAMPLING.max_sequence_length)
        pred = transformer(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
        for ema, m in zip(emas, (transformer, text, text_2)):
            ema_update(ema, m, decay)
        loss_v = float(loss.detach())
        bar.step(step, loss=loss_v)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            quick_eval(make_pipeline(vae, emas[1], emas[2], tok, emas[0], cfg.shift), step + 1, "flow", FLOW_SAMPLING)
    seconds = bar.close()
    out_dir = Path(out_dir)
    make_pipeline(vae.cpu(), emas[1].cpu(), emas[2].cpu(), tok, emas[0].cpu(), cfg.shift).save_pretrained(out_dir)
    return FlowTrainResult(out_dir, cfg.steps, seconds, loss_v, sum(p.numel() for p in transformer.parameters()),
                           sum(p.numel() for m in (text, text_2) for p in m.parameters()))
