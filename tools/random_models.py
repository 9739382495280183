"""Models with real architectures and random weights, for measuring speed and for tests of the
whole path on a user's kind of model: SD v1.5's pipeline, CLIP ViT-L/14, an untrained reward head
on any CLIP folder, and tiny SD3- and FLUX-format (flow-matching) pipelines.  Nothing here is
trained; only shapes and formats are real."""

from __future__ import annotations

from pathlib import Path

from core.loading import load_clip
from reward.config import RegionConfig
from reward.model import RewardModel
from reward.region import build_region_head
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



# ---------------------------------------------------------------------------------------------
# Tiny flow-matching folders laid out as SD3.5's and FLUX.1's downloads (issue 72): the same
# pipeline, model, tokenizer and scheduler classes and the settings a stage may read (16 latent
# channels, the VAE's shift and scaling factors, the scheduler's shift), random weights.  Each
# builds offline: the CLIP tokenizers are clip_bpe_tokenizer's, the T5 one a character Unigram.

# The VAEs' latent statistics from the downloads' vae/config.json (no quant convs in either).
SD3_VAE_LATENTS = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
                       use_quant_conv=False, use_post_quant_conv=False)
FLUX_VAE_LATENTS = dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False)
# T5 v1.1 (gated GELU, as SD3's and FLUX's T5-XXL), FLUX's here; SD3_T5 widens it (see there).
TINY_T5 = dict(d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8,
               feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
               tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def t5_unigram_tokenizer():
    """T5's tokenizer class (a Unigram over SentencePiece pieces: <pad> 0, </s> 1, <unk> 2) with
    one piece per printable ASCII character, alone and after the word-start mark, T5's 100
    sentinel tokens and its 512-token limit: any English text tokenizes, one token per character."""
    import string

    from transformers import T5Tokenizer

    chars = sorted(set(string.printable) - set(string.whitespace))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -3.0) for c in chars]
    return T5Tokenizer(vocab=pieces, model_max_length=512)


def tiny_flow_vae(latents: dict, image_size: int):
    """An AutoencoderKL with a flow family's latent settings: 4 blocks (8x down) as the downloads'."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
                         norm_num_groups=4, sample_size=image_size, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, **latents)


# SD3's second CLIP (OpenCLIP bigG) is wider than the first (ViT-L): 48 vs 32 here, so code that
# assumes one width fails here as it would on the download.  SD3 concatenates their last-but-one
# hidden states (32 + 48 = 80 wide, padded to the T5's 96) and their pooled projections (80).
TINY_TEXT_G = {**TINY_TEXT, "hidden_size": 48, "projection_dim": 48, "intermediate_size": 96}
SD3_T5 = {**TINY_T5, "d_model": 96, "d_ff": 96}


def build_tiny_sd3(path: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A StableDiffusion3Pipeline folder laid out as SD3.5-medium's download (random weights): two
    CLIPTextModelWithProjection encoders with BPE tokenizers, a T5 encoder, an SD3 transformer with
    SD3.5's dual-attention and RMS-norm blocks, FlowMatchEulerDiscreteScheduler (shift 3) and a
    16-channel VAE with SD3's shift and scaling factors.

    The T5 is always saved, as in the download: a folder whose model_index.json names it null does
    not load in stock ``from_pretrained`` (only the pipeline's optional components may be null);
    a user drops it at load time, ``from_pretrained(path, text_encoder_3=None, tokenizer_3=None)``,
    and the pipeline then feeds zeros in its place."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok, tok_2 = clip_bpe_tokenizer(), clip_bpe_tokenizer()
    text = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tok), **TINY_TEXT))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=len(tok_2), **TINY_TEXT_G))
    tok_3 = t5_unigram_tokenizer()
    text_3 = T5EncoderModel(T5Config(vocab_size=len(tok_3), **SD3_T5))
    # caption_projection_dim is the blocks' width, 4 heads x 8; the position table holds 4x the
    # default image's patches per side (SD3.5's holds 3x), so larger images fit
    transformer = SD3Transformer2DModel(
        sample_size=image_size // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=SD3_T5["d_model"],
        pooled_projection_dim=TINY_TEXT["projection_dim"] + TINY_TEXT_G["projection_dim"],
        pos_embed_max_size=image_size // 4, dual_attention_layers=(0,), qk_norm="rms_norm")
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_flow_vae(SD3_VAE_LATENTS, image_size), text_encoder=text, tokenizer=tok,
        text_encoder_2=text_2, tokenizer_2=tok_2, text_encoder_3=text_3, tokenizer_3=tok_3).save_pretrained(path)
    return Path(path)


def build_tiny_flux(path: Path, image_size: int = 64, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A FluxPipeline folder laid out as FLUX.1-dev's download (random weights): a CLIPTextModel
    (its pooled output) with a BPE tokenizer, a T5 encoder, a Flux transformer (double- and
    single-stream blocks; ``guidance_embeds``: FLUX.1-dev's distilled guidance input, False for
    schnell), FlowMatchEulerDiscreteScheduler with FLUX's resolution-dependent shift, and a
    16-channel VAE with FLUX's shift and scaling factors."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = clip_bpe_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), **TINY_TEXT))
    tok_2 = t5_unigram_tokenizer()
    text_2 = T5EncoderModel(T5Config(vocab_size=len(tok_2), **TINY_T5))
    # FLUX packs 2x2 latent patches into 4 * 16 = 64 input channels; head dim 16 = sum(axes_dims_rope)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TINY_T5["d_model"], pooled_projection_dim=TINY_TEXT["hidden_size"],
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    FluxPipeline(scheduler=scheduler, vae=tiny_flow_vae(FLUX_VAE_LATENTS, image_size), text_encoder=text,
                 tokenizer=tok, text_encoder_2=text_2, tokenizer_2=tok_2, transformer=transformer).save_pretrained(path)
    return Path(path)
