"""Tiny random models in the real folder formats, for whole-path tests on CPU.

They have the architecture classes a user's Stable Diffusion v1.5 / CLIP folder has, just a few
thousand parameters, so every loading and training path runs exactly as it would on real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shapes.tokenizer import build_tokenizer, text_config_ids


def make_tiny_sd(path: str | Path, image_size: int = 32, seed: int = 0, scheduler: str = "ddim") -> Path:
    """A StableDiffusionPipeline folder: VAE with 2 blocks (8x8... latents 16x16x4 at 32 px).
    ``scheduler``: "ddim", the shapes model's (v-prediction, zero terminal SNR), or "euler", an
    EulerDiscreteScheduler as a user's Stable Diffusion folder may ship (epsilon, linspace)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = build_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, projection_dim=16,
                                        **text_config_ids(tok)))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                        layers_per_block=1, norm_num_groups=8, sample_size=image_size)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)
    if scheduler == "euler":
        noise = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, prediction_type="epsilon", timestep_spacing="linspace",
                                       steps_offset=1)
    else:
        noise = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                              timestep_spacing="trailing", rescale_betas_zero_snr=True,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=noise, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return Path(path)


def make_tiny_flow(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A StableDiffusion3Pipeline folder shaped as shapes-flow (shapes.training.flow: two CLIP text
    encoders with the shapes tokenizer, no T5, a VAE with SD3's shift factor), tiny and random:
    sample it with max_sequence_length=0, as shapes-flow."""
    from diffusers import AutoencoderKL

    from shapes.training.diffusion import TextArch
    from shapes.training.flow import TransformerArch, build_text_encoder, build_transformer, make_pipeline

    torch.manual_seed(seed)
    tok = build_tokenizer()
    arch = TextArch(hidden=16, layers=2, heads=2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        norm_num_groups=8, sample_size=image_size, shift_factor=0.1, scaling_factor=1.0)
    transformer = build_transformer(TransformerArch(num_layers=1, num_attention_heads=2, attention_head_dim=8),
                                    image_size // 2, 4, 2 * arch.hidden)
    make_pipeline(vae, build_text_encoder(arch, tok), build_text_encoder(arch, tok), tok, transformer,
                  shift=1.0).save_pretrained(path)
    return Path(path)


def make_tiny_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A CLIPModel folder with the shapes tokenizer and a CLIPImageProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, **text_config_ids(tok)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return Path(path)


def tiny_reward_config(root, clip, out, *more: str):
    """A RewardConfig for a reward trained on ``root`` over a tiny CLIP (:func:`make_tiny_clip`) on
    the CPU, a small head; ``more`` are further overrides (a test's epochs, its options)."""
    from core.config import load_config
    from reward.config import RewardConfig

    return load_config(RewardConfig, None, [
        f"data.root={root}", f"model.clip={clip}", f"out_dir={out}", "device=cpu", "progress=false",
        "data.min_val_prompts=3", "model.hidden=[16]", *more])


def make_tiny_lora_run(base: str | Path, path: str | Path, seed: int = 0, config: bool = True) -> Path:
    """A LoRA fine-tuning run folder as ``make finetune`` writes it: ``pytorch_lora_weights.safetensors``
    (peft LoRA on the UNet's attention projections, saved in diffusers' format) and ``config.yaml``
    (the resolved FinetuneConfig, ``model.pipeline`` naming ``base``).  The adapter's B matrices
    are random rather than zero (a trained adapter's are not zero), so the run samples other
    images than its base.  ``config=False``: the weights alone (a bare adapter folder)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from core.config import load_config, save_config
    from finetune.config import FinetuneConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(base) / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(path), safe_serialization=True,
                                              unet_lora_layers={k: v.detach().contiguous() for k, v in layers.items()})
    if config:
        save_config(load_config(FinetuneConfig, None, [f"model.pipeline={base}", f"output_dir={path}"]),
                    path / "config.yaml")
    return path
