"""height / width for generation and fine-tuning: the size rule (pure), then the whole paths on the
tiny model (native 32x32, VAE factor 2) at a non-native, non-square 40x48 (width x height)."""

import json

import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from core.errors import UserError
from core.sampling import image_size
from data import Store
from finetune.config import FinetuneConfig
from pipelines.cli import run

H, W = 48, 40  # pixels; the tiny model's native size is 32x32


def test_image_size_rule():
    assert image_size(None, None, 16, 4) == (64, 64)  # the shapes model: sample_size 16, VAE factor 4
    assert image_size(None, None, [16, 24], 8) == (128, 192)
    assert image_size(H, None, 16, 2) == (H, 32)
    assert image_size(512, 768, 64, 8) == (512, 768)  # Stable Diffusion
    for h, w, factor in ((50, None, 2), (36, 32, 4), (0, 32, 2), (-8, 32, 2), (32, 520, 16)):
        with pytest.raises(UserError, match="is not a positive multiple of"):
            image_size(h, w, 16, factor)


def generate_args(sd, root, *extra):
    return [f"pipeline={sd}", f"root={root}", "prompts=train", "max_prompts=2", "per_prompt=2",
            "sampling.num_inference_steps=2", f"sampling.height={H}", f"sampling.width={W}", *extra]


def test_generate_at_a_non_native_size(tiny_sd, tmp_path, capsys):
    from pipelines.generate import main

    root = tmp_path / "round"
    assert run(main, generate_args(tiny_sd, root)) == 0
    gens = Store(root).to_pandas("generations")
    assert len(gens) == 4 and set(gens["height"]) == {H} and set(gens["width"]) == {W}
    for path in gens["image_path"]:
        assert Image.open(root / path).size == (W, H)

    bad = tmp_path / "bad"
    assert run(main, generate_args(tiny_sd, bad, "sampling.height=50")) == 2
    assert "height=50 pixels is not a positive multiple of 8" in capsys.readouterr().err
    assert not (bad / "images").exists() or not any((bad / "images").iterdir())  # nothing written


@pytest.fixture(scope="module")
def reward(tmp_path_factory):
    """A learned reward on the tiny CLIP (an untrained head): CLIP resizes images of any size."""
    from tools.random_models import build_reward_model
    from tiny_models import make_tiny_clip

    d = tmp_path_factory.mktemp("reward")
    return build_reward_model(make_tiny_clip(d / "clip"), d / "reward")


def finetune_cfg(sd, reward, out, method, *extra):
    return load_config(FinetuneConfig, None, [
        f"method={method}", f"output_dir={out}", f"model.pipeline={sd}", f"reward.path={reward}",
        "sampling.num_inference_steps=2", f"sampling.height={H}", f"sampling.width={W}", "dpok.checkpoint_every_rounds=0", "rwl.checkpoint_every_steps=0",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=2",
        "dpok.window=[0,null]", "dpok.tail_steps=0", "rwl.samples_per_prompt=1", "rwl.steps=2", "rwl.batch_size=4", "prompts.split=heldout",
        "prompts.eval_prompts=[one circle, two squares]", *extra])


def test_dpok_at_a_non_native_size(tiny_sd, reward, tmp_path):
    from core.loading import load_sd_pipeline
    from core.sampling import SamplingConfig, generate_images
    from finetune.dpok import train_dpok

    out = train_dpok(finetune_cfg(tiny_sd, reward, tmp_path / "run", "dpok", "sample_grid_every=1"),
                     progress=False).output_dir
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["final"]["loss"])
    grid = Image.open(out / "samples" / "round-0001.png")
    assert grid.size == (2 * (W + 2), H + 2)  # two eval prompts of W x H, 2-px gutters
    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    pipe.load_lora_weights(out)
    images = generate_images(pipe, ["one circle"], [0], SamplingConfig(num_inference_steps=2, height=H, width=W))
    assert images[0].size == (W, H)
    with pytest.raises(UserError, match="oracle .* judges square images"):  # it would misjudge them
        train_dpok(finetune_cfg(tiny_sd, reward, tmp_path / "oracle", "dpok", "reward.kind=oracle"), progress=False)


@pytest.mark.slow
def test_rwl_at_a_non_native_size(tiny_sd, reward, tmp_path):
    from pipelines.generate import main
    from finetune.rwl import train_rwl

    root = tmp_path / "round"  # D_pre: images of the same size
    assert run(main, generate_args(tiny_sd, root)) == 0
    m = train_rwl(finetune_cfg(tiny_sd, reward, tmp_path / "run", "rwl", f"rwl.pretrain_source={root}"), progress=False).metrics
    assert m["d_pre"]["images"] == 4 and all(np.isfinite(h["loss"]) for h in m["history"])
    with pytest.raises(UserError, match="renders square images"):
        train_rwl(finetune_cfg(tiny_sd, reward, tmp_path / "shapes", "rwl"), progress=False)
    assert not (tmp_path / "shapes").exists()  # refused before anything is written
    with pytest.raises(UserError, match=r"is 40x48 \(width x height\), the model is fine-tuned at 48x48"):
        train_rwl(finetune_cfg(tiny_sd, reward, tmp_path / "other", "rwl", f"rwl.pretrain_source={root}",
                               "sampling.width=48"), progress=False)


@pytest.mark.parametrize("method", ["dpok", "rwl"])
def test_a_bad_size_is_refused_before_anything_is_written(tiny_sd, reward, tmp_path, method):
    from finetune.dpok import train_dpok
    from finetune.rwl import train_rwl

    train = train_dpok if method == "dpok" else train_rwl
    with pytest.raises(UserError, match="width=44 pixels is not a positive multiple of 8"):
        train(finetune_cfg(tiny_sd, reward, tmp_path / "run", method, "sampling.width=44"), progress=False)
    assert not (tmp_path / "run").exists()


def test_latents_follow_the_size(tiny_sd, reward, tmp_path):
    from finetune.run import setup_run

    r, _ = setup_run(finetune_cfg(tiny_sd, reward, tmp_path / "run", "dpok", "sampling.width=48"), None)
    assert r.latent_shape == (4, H // 2, 48 // 2) and r.image_size == (H, 48)
    r.accelerator.end_training()


def test_renderer_rounds_take_one_square_size(tmp_path, capsys):
    from pipelines.generate import main

    args = [f"root={tmp_path}/r", "source=renderer", "max_prompts=1", "per_prompt=1"]
    assert run(main, [*args, "sampling.height=48"]) == 0
    assert set(Store(tmp_path / "r").to_pandas("generations")["height"]) == {48}
    assert run(main, [*args, "sampling.height=48", "sampling.width=40"]) == 2
    assert "source=renderer draws square images" in capsys.readouterr().err
