"""Models with real architectures and random weights, for measuring speed and for tests of the
whole path on a user's kind of model: SD v1.5's pipeline, CLIP ViT-L/14, and an untrained reward
head on any CLIP folder.  Nothing here is trained; only shapes and formats are real."""

from __future__ import annotations

from pathlib import Path

from core.loading import load_clip
from reward.model import RewardModel
from shapes.tokenizer import build_tokenizer, text_config_ids


# SD v1.5's architecture (diffusers configs), built with random weights: only speed is measured.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768)


def build_random_sd15(path: Path) -> Path:
    """A StableDiffusionPipeline folder with SD v1.5's UNet, VAE and text-encoder shapes (random
    weights, the shapes tokenizer padded to 77 tokens as SD's is)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    tok.model_max_length = 77
    ids = {**text_config_ids(tok), "max_position_embeddings": 77}
    text = CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT, **ids}))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tok, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


# CLIP ViT-L/14's architecture (transformers config), random weights, for the CUDA bench's reward.
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14)
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77)


def build_random_clip_vitl14(path: Path) -> Path:
    """A CLIPModel folder with ViT-L/14's shapes (random weights, the shapes tokenizer padded to 77
    tokens) and a 224-px CLIPImageProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = build_tokenizer()
    tok.model_max_length = 77
    config = CLIPConfig(text_config={**VIT_L14_TEXT, **text_config_ids(tok), "max_position_embeddings": 77},
                        vision_config=VIT_L14_VISION, projection_dim=768)
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    return Path(path)


def build_reward_model(clip: str | Path, path: Path) -> Path:
    """A reward model folder: an untrained (seeded) head on the CLIP folder ``clip``."""
    RewardModel.build(load_clip(clip, device="cpu")).save_pretrained(path, name="bench")
    return Path(path)
