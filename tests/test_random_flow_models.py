"""Tier 2: the tiny SD3- and FLUX-format folders of tools/random_models load in diffusers' own
pipelines (nothing of ours between) and generate images of the asked size, offline, on CPU."""

import json

import numpy as np
import pytest
import torch

PROMPT = "a red circle left of a blue square"


def _generate(pipe, **kw) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0), **kw).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    return out


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from tools.random_models import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("flow") / "sd3.5-medium")


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from tools.random_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flow") / "flux.1-dev")


def test_tiny_sd3_loads_in_the_stock_pipeline_and_generates(sd3):
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    index = json.loads((sd3 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3)
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size  # as ViT-L / bigG
    assert (pipe.vae.config.latent_channels, pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) \
        == (16, 0.0609, 1.5305)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    with_cfg = _generate(pipe, guidance_scale=4.5)
    assert not np.array_equal(with_cfg, _generate(pipe, guidance_scale=1.0))  # CFG takes part


def test_tiny_sd3_runs_without_its_t5_as_the_download_does(sd3):
    """SD3's documented memory saving: drop the T5 at load time; the pipeline feeds zeros instead."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3, text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None
    assert not np.array_equal(_generate(pipe), _generate(StableDiffusion3Pipeline.from_pretrained(sd3)))


def test_tiny_flux_loads_in_the_stock_pipeline_and_generates(flux):
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel, T5EncoderModel

    assert json.loads((flux / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    pipe = FluxPipeline.from_pretrained(flux)
    assert type(pipe.text_encoder) is CLIPTextModel and isinstance(pipe.text_encoder_2, T5EncoderModel)
    assert pipe.transformer.config.guidance_embeds  # FLUX.1-dev's distilled guidance
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels == 64  # 2x2 packing
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (0.1159, 0.3611)
    assert pipe.scheduler.config.use_dynamic_shifting
    low, high = _generate(pipe, guidance_scale=1.0), _generate(pipe, guidance_scale=3.5)
    assert not np.array_equal(low, high)  # the guidance input takes part


def test_t5_tokenizer_survives_save_and_load(sd3, flux):
    """The locally built T5 tokenizer reloads from the folders with the same ids, ends with </s>,
    and decodes back to the prompt (no piece of it is <unk>)."""
    from transformers import AutoTokenizer

    from tools.random_models import t5_unigram_tokenizer

    built = t5_unigram_tokenizer()
    ids = built(PROMPT).input_ids
    assert ids[-1] == built.eos_token_id == 1 and built.unk_token_id not in ids
    for folder in (sd3 / "tokenizer_3", flux / "tokenizer_2"):
        loaded = AutoTokenizer.from_pretrained(folder)
        assert loaded(PROMPT).input_ids == ids and loaded.model_max_length == 512
        assert loaded.decode(ids, skip_special_tokens=True) == PROMPT
