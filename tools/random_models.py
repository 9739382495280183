"""Models with real architectures and random weights, for measuring speed and for tests of the
whole path on a user's kind of model: SD v1.5's pipeline, CLIP ViT-L/14, and an untrained reward
head on any CLIP folder.  Nothing here is trained; only shapes and formats are real."""

from __future__ import annotations

from pathlib import Path

from core.loading import load_clip
from reward.config import RegionConfig
from reward.model import RewardModel
from reward.region.head import build_region_head
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


def build_reward_model(clip: str | Path, path: Path, region: bool = False) -> Path:
    """A reward model folder: an untrained (seeded) head on the CLIP folder ``clip``; ``region``:
    with an untrained region head too (what region-aware fine-tuning needs to run)."""
    model = RewardModel.build(load_clip(clip, device="cpu"))
    if region:
        model.region_head = build_region_head(model, RegionConfig().hidden, seed=0)
    model.save_pretrained(path, name="bench")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Tiny folders shaped like a user's own: the same classes, files and settings as SD v1.5's and
# CLIP ViT-L/14's downloads (a byte-level BPE CLIPTokenizer, SD's PNDM scheduler and epsilon
# prediction, 8x VAE, a safety checker and feature extractor in model_index.json), a few thousand
# parameters each.  The quick-path test (tests/test_quick_path.py) follows the docs on them: the
# tokenizer is deliberately not the shapes world's, so no stage can take them for shapes models.

# CLIP's text configs name the legacy ids (eos 2), so pooling takes the argmax id, which is
# <|endoftext|>, the largest id here as in CLIP's own vocabulary.
CLIP_LEGACY_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=32, **CLIP_LEGACY_IDS)


def clip_bpe_tokenizer():
    """CLIP's tokenizer class with CLIP's byte-level alphabet (each byte alone and at a word's end)
    and no merges: any text tokenizes, one token per character, padded to 77 like CLIP's."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=77)


def build_tiny_sd15(path: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A StableDiffusionPipeline folder laid out as SD v1.5's download (random weights): 4-block
    VAE (8x), 4-block UNet, CLIP text encoder and BPE tokenizer, PNDM scheduler, safety checker."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = clip_bpe_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), **TINY_TEXT))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=image_size,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    unet = UNet2DConditionModel(
        sample_size=image_size // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=TINY_TEXT, projection_dim=32, vision_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8)))
    features = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                            safety_checker=checker, feature_extractor=features).save_pretrained(path)
    return Path(path)


def build_tiny_clip(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A CLIPModel folder laid out as CLIP ViT-L/14's download (random weights): the BPE tokenizer
    and a CLIPImageProcessor, at ``image_size`` pixels instead of 224."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tok = clip_bpe_tokenizer()
    config = CLIPConfig(text_config={**TINY_TEXT, "vocab_size": len(tok)}, projection_dim=32,
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=image_size, patch_size=8))
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(path)
    return Path(path)
