"""The shapes-world base models: committed folders, evaluation, and ``make base`` on tiny sizes."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from core.config import load_config
from core.errors import UserError
from core.loading import load_clip, load_sd_pipeline
from core.sampling import SamplingConfig
from evaluation.base_model import clip_retrieval, evaluate_base, evaluate_model
from evaluation.compare import EvalConfig, evaluate
from pipelines.base import main
from pipelines.cli import run
from shapes import SHAPES_CLIP, SHAPES_SD
from shapes.oracle import ALIGNMENT_KEYS
from shapes.render import sample_scene
from shapes.training.base import BaseConfig, BaseEvalConfig, RetrievalConfig, train_base
from shapes.training.clip import CLIPArch, CLIPTrainConfig, multi_positive_nce
from shapes.training.common import (SkewConfig, match_matrix, render_pool, scene_is_heldout,
                                    scene_matches, skewed_prompt_weights)
from shapes.training.diffusion import DiffusionConfig, TextArch, UNetArch
from shapes.training.flow import FlowConfig, TransformerArch
from shapes.training.vae import VAEConfig
from shapes.world import Prompt, all_prompts, prompt_set
from tiny_models import make_tiny_clip, make_tiny_sd

FAST = SamplingConfig(num_inference_steps=2, batch_size=64)


# ---------------------------------------------------------------- pure functions

def test_match_matrix_agrees_with_scene_matches():
    prompts = all_prompts()
    scenes = [sample_scene(p, s) for s, p in enumerate(prompts[::7])]
    m = match_matrix(scenes, prompts)
    want = np.array([[scene_matches(p, s) for p in prompts] for s in scenes])
    assert np.array_equal(m, want)
    assert m.sum(axis=1).min() >= 1  # every scene shows at least its own prompt


def test_multi_positive_nce_is_cross_entropy_with_one_positive():
    logits = torch.randn(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    pos = torch.nn.functional.one_hot(target, 7).bool()
    assert torch.allclose(multi_positive_nce(logits, pos),
                          torch.nn.functional.cross_entropy(logits, target), atol=1e-6)
    # A second positive does not compete with the first (each is scored against negatives only).
    pos2 = pos.clone()
    pos2[0, 1] = True
    logits2 = logits.clone()
    logits2[0, 1] = 50.0
    per_row0 = torch.logaddexp(logits2[0, 0], torch.logsumexp(logits2[0, 2:], 0)) - logits2[0, 0]
    assert per_row0 < 50  # the large positive logit is not in row 0's denominator


def test_skew_weights_and_heldout_scenes_are_excluded():
    prompts = prompt_set("train")
    w = skewed_prompt_weights(prompts, SkewConfig(count_weights=(0.4, 0.4, 0.1, 0.1)))
    share = {c: w[[p.count == c for p in prompts]].sum() for c in (1, 2, 3, 4)}
    assert share[1] == pytest.approx(0.4) and share[3] == pytest.approx(0.1)
    pool = render_pool(prompts, w, 300, seed=0, size=32, exclude_heldout_scenes=True)
    assert not any(scene_is_heldout(s) for s in pool.scenes)
    assert pool.match_matrix()[np.arange(300), pool.prompt_index].all()


def test_one_attribute_swaps_change_exactly_one_attribute():
    from shapes.world import one_attribute_swaps

    p = Prompt(3, "circle", "red", "white")
    pert = one_attribute_swaps(p)
    assert len(pert) == 3 + 1 + 3 + 2
    for attr, q in pert:
        diff = [a for a in ("count", "shape", "color", "background") if getattr(p, a) != getattr(q, a)]
        assert diff == [attr]


# ---------------------------------------------------------------- committed checkpoints

def test_committed_folders_load_with_stock_classes():
    from diffusers import StableDiffusionPipeline
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_SD, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    clip = CLIPModel.from_pretrained(SHAPES_CLIP, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(SHAPES_CLIP, local_files_only=True)
    AutoImageProcessor.from_pretrained(SHAPES_CLIP, local_files_only=True)
    ids = tok(["three red circles on a white background"], return_tensors="pt")["input_ids"]
    assert ids[0, -1].item() == clip.config.text_config.eos_token_id
    size = sum(f.stat().st_size for d in (SHAPES_SD, SHAPES_CLIP) for f in d.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    for d in (SHAPES_SD, SHAPES_CLIP):
        m = json.loads((d / "metrics.json").read_text())
        assert m["targets"] and (d / "README.md").is_file() and (d / "config.yaml").is_file()


def test_committed_sd_samples_64px_images():
    pipe = load_sd_pipeline(SHAPES_SD, device="cpu")
    out = pipe(["one red circle"], num_inference_steps=2, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


# ---------------------------------------------------------------- evaluation on tiny models

def test_adaln_zero_starts_every_block_as_the_identity_and_still_learns():
    """DiT's adaLN-Zero on SD3's transformer: the first prediction is exactly 0, and one gradient
    step moves it (the zeroed modulations are not a dead end)."""
    from shapes.training.flow import adaln_zero_, build_transformer

    torch.manual_seed(0)
    model = build_transformer(TransformerArch(num_layers=2, num_attention_heads=2, attention_head_dim=8), 8, 4, 16)
    adaln_zero_(model)
    x, text, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16), torch.randn(2, 16)

    def predict():
        return model(hidden_states=x, timestep=torch.tensor([100.0, 900.0]), encoder_hidden_states=text,
                     pooled_projections=pooled, return_dict=False)[0]

    assert predict().abs().max() == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (predict() - x).square().mean().backward()
    opt.step()
    assert predict().abs().max() > 0


def test_evaluate_model_on_tiny_pipeline(tmp_path):
    make_tiny_sd(tmp_path / "sd", image_size=64)
    pipe = load_sd_pipeline(tmp_path / "sd", device="cpu")
    sets = {"train": [Prompt(1, "circle", "red"), Prompt(3, "square")],
            "heldout": [Prompt(2, "circle", "green", "black")]}
    ev = evaluate_model(pipe, BaseEvalConfig(samples_per_prompt=2, sampling=FAST), out_dir=tmp_path / "ev",
                        prompt_sets=sets)
    assert set(ev.sets) == {"train", "heldout", "common", "rare_counts"}
    assert ev.sets["train"].n_images == 4 and ev.sets["common"].n_prompts == 1
    for a in ev.sets.values():
        assert 0.0 <= a.overall <= 1.0 and 0.0 <= a.count <= 1.0
    assert (tmp_path / "ev" / "grids" / "heldout-combination.png").is_file()
    json.dumps(ev.to_dict())  # serialisable as metrics.json
    # Fixed seeds: a second evaluation gives the same verdicts.
    again = evaluate_model(pipe, BaseEvalConfig(samples_per_prompt=2, sampling=FAST), prompt_sets=sets)
    assert json.dumps(again.to_dict()["sets"]) == json.dumps(ev.to_dict()["sets"])  # NaN-safe


@pytest.mark.slow
def test_base_card_heldout_figure_is_make_evals_base_figure(tmp_path):
    """One seed scheme: the card evaluates each split as its own list seeded like `make eval`, so
    its held-out figures are make eval's base figures on split=heldout with the same samples per
    prompt, seed and sampling (controls on, as by default).  The committed model at 4 steps, so the
    figures are neither all 0 nor all 1 and the match is not vacuous."""
    k, seed, steps = 2, 7, 4
    card = evaluate_model(load_sd_pipeline(SHAPES_SD, device="cpu"), BaseEvalConfig(
        samples_per_prompt=k, seed=seed, sampling=SamplingConfig(num_inference_steps=steps), splits=("heldout",)))
    base = evaluate(load_config(EvalConfig, None, [
        "models=[]", "split=heldout", f"samples_per_prompt={k}", f"seed={seed}",
        f"sampling.num_inference_steps={steps}", "reward.kind=oracle", f"output_dir={tmp_path}"]))[0]
    heldout = card.sets["heldout"]
    assert base.n_images == heldout.n_images == k * len(prompt_set("heldout"))
    assert base.alignment == {key: getattr(heldout, key) for key in ALIGNMENT_KEYS}
    assert 0 < heldout.overall < 1 or 0 < heldout.count < 1


def test_clip_retrieval_on_tiny_clip(tmp_path):
    make_tiny_clip(tmp_path / "clip", image_size=64)
    clip = load_clip(tmp_path / "clip", device="cpu")
    r = clip_retrieval(clip, RetrievalConfig(per_prompt=1, split="heldout"))
    assert r.n_images == 2 * len(prompt_set("heldout"))
    assert 0.0 <= r.accuracy <= 1.0 and set(r.pairwise_by_attribute) == {"count", "shape", "color",
                                                                           "background"}
    # A random model is near chance: far below the trained model's target.
    assert r.accuracy < 0.6


# ---------------------------------------------------------------- make base on tiny sizes

def tiny_base_config(out_dir) -> BaseConfig:
    return BaseConfig(
        out_dir=str(out_dir), threads=1, progress=False,
        clip=CLIPTrainConfig(arch=CLIPArch(text_hidden=32, text_layers=1, text_heads=2,
                                           vision_hidden=32, vision_layers=1, vision_heads=2,
                                           projection_dim=16),
                             steps=3, batch_size=8, pool_size=200, log_every=0),
        vae=VAEConfig(block_out_channels=(8, 8, 8), norm_num_groups=4, steps=3, batch_size=4,
                      pool_size=64, log_every=0),
        diffusion=DiffusionConfig(unet=UNetArch(block_out_channels=(16, 16, 16), norm_num_groups=8,
                                                attention_head_dim=4),
                                  text=TextArch(hidden=32, layers=1, heads=2), text_init="clip",
                                  steps=3, batch_size=4, pool_size=64, log_every=0),
        flow=FlowConfig(transformer=TransformerArch(num_layers=1, num_attention_heads=2, attention_head_dim=8),
                        text=TextArch(hidden=16, layers=2, heads=2), steps=3, batch_size=4, pool_size=64, log_every=0),
        eval=BaseEvalConfig(samples_per_prompt=1, sampling=FAST, grid_prompts=2),
        retrieval=RetrievalConfig(per_prompt=1, split="heldout"))


@pytest.mark.slow
def test_make_base_on_tiny_sizes(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    cfg = tiny_base_config(tmp_path / "base")
    res = train_base(cfg)
    evaluate_base(cfg, res)
    StableDiffusionPipeline.from_pretrained(res.sd_dir, local_files_only=True)
    CLIPModel.from_pretrained(res.clip_dir, local_files_only=True)
    m = json.loads((res.sd_dir / "metrics.json").read_text())
    assert {"train", "heldout", "common", "rare_counts"} <= set(m["sets"])
    assert m["sets"]["heldout"]["n_prompts"] == len(prompt_set("heldout"))
    assert (res.sd_dir / m["grids"]["train/count"]).is_file()
    assert "Reproduce" in (res.sd_dir / "README.md").read_text()
    assert (res.clip_dir / "README.md").is_file() and (res.clip_dir / "config.yaml").is_file()
    # The text encoder started from the CLIP text tower (text_init="clip") and has its shape.
    assert json.loads((res.sd_dir / "text_encoder" / "config.json").read_text())["hidden_size"] == 32
    # A second run into the same folder refuses to replace it, through the entry point too.
    before = (res.sd_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a model"):
        train_base(cfg)
    assert (res.sd_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    # An eval-only run re-evaluates the weights there: the training record (config sections, stage
    # times, threads) stays that of the run that trained them; eval and retrieval are this run's.
    # Hand-written notes that end a card (how those weights were really trained) stay too.
    config_before = yaml.safe_load((res.sd_dir / "config.yaml").read_text())
    notes = "## How this checkpoint was produced\n\nBy hand, in three sittings.\n"
    (res.sd_dir / "README.md").write_text((res.sd_dir / "README.md").read_text() + "\n" + notes)
    assert run(main, [f"out_dir={cfg.out_dir}", "stages=[eval]", "threads=2", "eval.seed=5", "eval.samples_per_prompt=1",
                      "eval.sampling.num_inference_steps=2", "eval.grid_prompts=2", "retrieval.per_prompt=1",
                      "retrieval.split=heldout", "progress=false"]) == 0
    config_after = yaml.safe_load((res.sd_dir / "config.yaml").read_text())
    assert config_after["eval"]["seed"] == 5 and config_after["threads"] == 1
    assert {k: v for k, v in config_after.items() if k != "eval"} == {k: v for k, v in config_before.items() if k != "eval"}
    card = (res.sd_dir / "README.md").read_text()
    assert card.endswith("\n" + notes) and card.count(notes) == 1
    assert 'Training time: see "How this checkpoint was produced" below.' in card
    again = json.loads((res.sd_dir / "metrics.json").read_text())
    assert again["threads"] == 1 and again["training_minutes"] == m["training_minutes"]
    assert {k: v for k, v in again["seconds_by_stage"].items() if k in ("clip", "vae", "unet")} == \
        {k: v for k, v in m["seconds_by_stage"].items() if k in ("clip", "vae", "unet")}

    # The flow stage: shapes-flow on shapes-sd's VAE, then evaluated alone: the other cards stay.
    from diffusers import StableDiffusion3Pipeline

    cards = {d: (d / "README.md").read_text() for d in (res.sd_dir, res.clip_dir)}
    flow_cfg = replace(cfg, stages=("flow", "eval"))
    flow = train_base(flow_cfg)
    evaluate_base(flow_cfg, flow)
    assert {d: (d / "README.md").read_text() for d in (res.sd_dir, res.clip_dir)} == cards
    # a stock load as a user drops SD3's T5; the VAE carries SD3's shift factor
    pipe = StableDiffusion3Pipeline.from_pretrained(flow.flow_dir, text_encoder_3=None, tokenizer_3=None)
    assert pipe.vae.config.shift_factor is not None and pipe.text_encoder_3 is None
    fm = json.loads((flow.flow_dir / "metrics.json").read_text())
    assert {"train", "heldout", "common", "rare_counts"} <= set(fm["sets"]) and "flow" in fm["seconds_by_stage"]
    assert fm["shapes_sd_train_overall"] == again["sets"]["train"]["overall"]
    assert fm["targets"]["train_overall_within_0.10_of_shapes_sd"] is not None
    card = (flow.flow_dir / "README.md").read_text()
    assert "max_sequence_length=0" in card and (flow.flow_dir / fm["grids"]["train/count"]).is_file()
    with pytest.raises(UserError, match="already holds a model"):
        train_base(flow_cfg)


def test_the_old_seed_offset_key_is_refused():
    with pytest.raises(UserError, match="eval.seed_offset"):
        load_config(BaseConfig, None, ["eval.seed_offset=0"])


def test_base_entry_point_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "b" / "shapes-clip").mkdir(parents=True)
    (tmp_path / "b" / "shapes-clip" / "config.json").write_text("{}")
    rc = run(main, [f"out_dir={tmp_path / 'b'}", "stages=[clip]"])
    assert rc == 2 and "already holds a model" in capsys.readouterr().err
    assert (tmp_path / "b" / "shapes-clip" / "config.json").read_text() == "{}"
