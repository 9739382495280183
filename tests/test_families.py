"""Model families (core.families): SD3- and FLUX-format folders are recognised, sampled by make
generate and make eval with their own flow ODE (fine-tuning them: tests/test_flow_finetune.py); unknown and video
folders are refused; the Stable Diffusion path is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from core.families import FAMILIES, folder_family, require_finetunable
from core.loading import pipeline_geometry, resolve_model
from pipelines.cli import run
from test_bad_input_cli import one_error_line
from tools.random_models import build_tiny_flux, build_tiny_sd3


# -- fixtures and helpers ---------------------------------------------------------------------------

SHAPES_PROMPTS = "one circle\none circle on a black background\n"


@pytest.fixture(scope="module")
def flow_folders(tmp_path_factory):
    """tools.random_models' tiny SD3 and FLUX folders at 32 px (a schnell-like FLUX without guidance
    embedding), and the SD3 one without its T5 (model_index.json names it null; SD3's third encoder
    is optional)."""
    import shutil

    d = tmp_path_factory.mktemp("flow")
    out = dict(sd3=build_tiny_sd3(d / "sd3", image_size=32), flux=build_tiny_flux(d / "flux", image_size=32),
               schnell=build_tiny_flux(d / "schnell", image_size=32, guidance_embeds=False))
    no_t5 = shutil.copytree(out["sd3"], d / "sd3-no-t5")
    for part in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(no_t5 / part)
    index = json.loads((no_t5 / "model_index.json").read_text())
    (no_t5 / "model_index.json").write_text(json.dumps(index | {"text_encoder_3": [None, None],
                                                                "tokenizer_3": [None, None]}))
    return out | {"sd3-no-t5": no_t5}


def fake_folder(path: Path, class_name: str | None, transformer: dict | None = None) -> Path:
    """A folder with only a model_index.json (and a transformer config): what detection reads."""
    path.mkdir(parents=True)
    index = {"_diffusers_version": "0.42.1"} | ({"_class_name": class_name} if class_name else {})
    (path / "model_index.json").write_text(json.dumps(index))
    if transformer is not None:
        (path / "transformer").mkdir()
        (path / "transformer" / "config.json").write_text(json.dumps(transformer))
    return path


def rows(root: Path):
    from data import Store
    from data.schemas import GENERATIONS

    return Store(root).to_pandas(GENERATIONS)


# -- detection and refusals (no weights) -------------------------------------------------------------

@pytest.mark.parametrize("class_name, family, guidance", [
    ("StableDiffusionPipeline", "sd", "cfg"), ("StableDiffusion3Pipeline", "sd3", "cfg"),
    ("FluxPipeline", "flux", "distilled")])
def test_a_folder_is_recognised_by_its_class_name(tmp_path, class_name, family, guidance):
    got = folder_family(fake_folder(tmp_path / "m", class_name, {"guidance_embeds": True}))
    assert (got.name, got.guidance, got.pipeline_class) == (family, guidance, class_name)
    assert got.flow == (family != "sd") and got.finetune  # every family fine-tunes (tests/test_flow_finetune.py)
    assert FAMILIES[class_name].denoiser == ("unet" if family == "sd" else "transformer")


def test_a_flux_folder_without_guidance_embeds_takes_no_guidance(tmp_path):
    assert folder_family(fake_folder(tmp_path / "schnell", "FluxPipeline", {"guidance_embeds": False})).guidance == "none"


@pytest.mark.parametrize("class_name, words", [
    ("StableVideoDiffusionPipeline", "a video model"), ("WanPipeline", "a video model"),
    ("CogVideoXPipeline", "a video model"), ("KandinskyV22Pipeline", "a model family this project does not know"),
    (None, "a pipeline without a _class_name folder")])
def test_unsupported_folders_are_refused(tmp_path, class_name, words):
    folder = fake_folder(tmp_path / "m", class_name)
    for check in (folder_family, resolve_model, pipeline_geometry):
        with pytest.raises(UserError, match=words):
            check(folder)


def test_make_generate_refuses_a_video_folder_before_anything_is_written(tmp_path, capsys):
    from pipelines.generate import main

    folder = fake_folder(tmp_path / "video", "StableVideoDiffusionPipeline")
    root = tmp_path / "round"
    assert run(main, [f"root={root}", f"pipeline={folder}"]) == 2
    one_error_line(capsys, "a video model", "StableDiffusionPipeline")
    assert not root.exists()


# -- the flow families through make generate, make eval, make finetune --------------------------------

@pytest.mark.parametrize("name, words, guidance", [
    ("sd3", "FlowMatchEulerDiscreteScheduler ODE, 3 steps, shift 3.0, guidance 5", 5.0),
    ("sd3-no-t5", "FlowMatchEulerDiscreteScheduler ODE, 3 steps, shift 3.0, guidance 5", 5.0),
    ("flux", "FlowMatchEulerDiscreteScheduler ODE, 3 steps, dynamic shift", 5.0),
    ("schnell", "no guidance (the model has no guidance embedding)", 1.0)])
def test_make_generate_samples_a_flow_folder_with_its_ode(flow_folders, tmp_path, capsys, name, words, guidance):
    """`make generate ARGS="pipeline=<flow folder>"`: each row names the flow sampler, the guidance
    applied and no eta; SD3 at the folder's native size (its transformer's), FLUX at 32 px given
    (FluxPipeline's native size is 128 latent pixels whatever the folder, 1024 px here)."""
    from pipelines.generate import main

    root = tmp_path / "round"
    size = [] if name.startswith("sd3") else ["sampling.height=32", "sampling.width=32"]
    assert run(main, [f"root={root}", f"pipeline={flow_folders[name]}", "max_prompts=2", "per_prompt=2",
                      "sampling.num_inference_steps=3", "sampling.batch_size=3", *size]) == 0
    out = capsys.readouterr()
    assert words in out.err and words in json.loads(out.out.strip().splitlines()[-1])["sampling"]
    if name == "flux":
        assert "distilled guidance 5" in out.err
    df = rows(root)
    assert len(df) == 4 and set(df["sampler"]) == {"FlowMatchEulerDiscreteScheduler"}
    assert set(df["guidance_scale"]) == {guidance} and set(df["eta"]) == {0.0}
    positions, pixels = pipeline_geometry(flow_folders[name])  # tokens, and pixels a token covers (2 x 8)
    assert (positions * pixels, pixels) == ((32, 16) if name.startswith("sd3") else (1024, 16))
    assert set(df["height"]) == set(df["width"]) == {32}
    from PIL import Image

    with Image.open(root / df["image_path"].iloc[0]) as im:
        assert im.size == (int(df["width"].iloc[0]), int(df["height"].iloc[0]))


def test_make_generate_refuses_no_t5_tokens_for_flux(flow_folders, tmp_path, capsys):
    """max_sequence_length=0 is shapes-flow's (SD3 without T5); FLUX reads its prompt from T5 alone,
    so 0 is refused with one line, before any image is written."""
    from pipelines.generate import main

    root = tmp_path / "round"
    assert run(main, [f"root={root}", f"pipeline={flow_folders['flux']}", "max_prompts=1", "per_prompt=1",
                      "sampling.height=32", "sampling.width=32", "sampling.max_sequence_length=0"]) == 2
    one_error_line(capsys, "max_sequence_length=0", "FLUX", "T5")
    assert not list(root.rglob("*.png"))


def test_flow_images_do_not_depend_on_their_batch(flow_folders):
    """One generator per image, as for SD: the same (prompt, seed) draws the same image alone."""
    import numpy as np

    from core.loading import load_sd_pipeline
    from core.sampling import SamplingConfig, generate_images

    for name in ("sd3", "flux"):
        pipe = load_sd_pipeline(flow_folders[name], device="cpu")
        cfg = SamplingConfig(num_inference_steps=2, height=32, width=32)
        both = generate_images(pipe, ["one red circle", "two blue squares"], [1, 2], cfg)
        alone = generate_images(pipe, ["two blue squares"], [2], cfg)
        assert np.array_equal(np.asarray(both[1]), np.asarray(alone[0]))
        assert not np.array_equal(np.asarray(both[0]), np.asarray(both[1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_make_eval_takes_a_flow_base_with_the_shapes_oracle(flow_folders, tiny_clip, tmp_path, name):
    """`make eval ARGS="base=<flow folder> ..."` on shapes-world prompts: the oracle's columns, renders
    at the images' size as the fidelity reference, and the report naming the flow sampler."""
    from pipelines.evaluate import main

    (tmp_path / "prompts.txt").write_text(SHAPES_PROMPTS)
    out = tmp_path / "report"
    assert run(main, [f"base={flow_folders[name]}", f"clip={tiny_clip}", "reward.kind=oracle", "models=[]",
                      f"prompts_file={tmp_path}/prompts.txt", "samples_per_prompt=2", "sampling.num_inference_steps=2",
                      "sampling.height=32", "sampling.width=32", f"output_dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oracle"] is True and metrics["fidelity_reference"] == "renders of the same prompts"
    assert metrics["models"]["base"]["sampler"] == "FlowMatchEulerDiscreteScheduler"
    assert metrics["sampling"].startswith("FlowMatchEulerDiscreteScheduler ODE, 2 steps, ")
    assert "FlowMatchEulerDiscreteScheduler ODE" in (out / "results.md").read_text()
    assert len(metrics["models"]["base"]["aligned"]) == 4 and (out / "samples-base.png").exists()


def test_the_probes_noise_level_a_user_gave_wins_over_the_finetune_configs(flow_folders, tmp_path, capsys):
    """make probe-steps finetune_config=<flow config>: the config's dpok.noise_level is probed unless
    the user gave noise_level, on the command line or in the probe's own --config file (stderr names
    the chain before the run; after_steps out of range then ends it with exit 2)."""
    from pipelines.probe_steps import main

    (tmp_path / "ft.yaml").write_text("dpok:\n  noise_level: 0.5\n")
    (tmp_path / "probe.yaml").write_text("noise_level: 0.3\n")
    base = [f"pipeline={flow_folders['sd3']}", f"finetune_config={tmp_path / 'ft.yaml'}", "after_steps=[99]",
            "reward.kind=oracle", f"output_dir={tmp_path / 'out'}"]
    for argv, level in (([], "0.5"), (["noise_level=0.2"], "0.2"), (["--config", str(tmp_path / "probe.yaml")], "0.3")):
        assert run(main, [*argv, *base]) == 2
        assert f"Flow-SDE steps (noise level {level})" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_make_probe_steps_probes_a_flow_folders_sde(flow_folders, tmp_path, capsys, name):
    """make probe-steps samples a flow folder's Flow-SDE (DPOK's chain) and its ODE tail: with the
    noise level near 0 the chain is the ODE, so every state settles the whole reward; at Flow-GRPO's
    0.7 the first state leaves it open.  A noise level of 0 is one error line, nothing written."""
    from pipelines.probe_steps import main

    (tmp_path / "p.txt").write_text("one circle\ntwo squares\n")
    common = [f"pipeline={flow_folders[name]}", f"prompts_file={tmp_path / 'p.txt'}", "samples_per_prompt=4",
              "sampling.num_inference_steps=4", "sampling.height=32", "sampling.width=32", "tail_from=2",
              "tail_steps=[1,2]", "batch_size=8", "reward.kind=oracle", "reward.oracle=graded"]
    assert run(main, [*common, f"output_dir={tmp_path / 'bad'}", "noise_level=0"]) == 2
    one_error_line(capsys, "noise_level=0", "Fix:")
    assert not (tmp_path / "bad").exists()

    from core.config import load_config
    from tools.probe import ProbeConfig, probe_steps

    def brightness(images, prompts):
        return images.float().mean(dim=(1, 2, 3))

    near_ode = probe_steps(load_config(ProbeConfig, None, [*common, "noise_level=1e-4"]), reward_fn=brightness)
    assert min(near_ode.settled.values()) > 0.99 and near_ode.tails[-1].corr > 0.99
    sde = probe_steps(load_config(ProbeConfig, None, [*common, "after_steps=[0]"]), reward_fn=brightness)
    assert sde.settled[0] < 0.9
    assert run(main, [*common, f"output_dir={tmp_path / 'probe'}"]) == 0
    assert "flow ODE" in (tmp_path / "probe" / "probe.md").read_text()


# -- Stable Diffusion as before -----------------------------------------------------------------------

def test_the_sd_family_samples_and_records_as_before(tiny_sd, tmp_path, capsys):
    """The SD folder keeps its sampler (the DDIM chain), its words and its geometry; the fine-tuning
    check takes it."""
    from pipelines.generate import main

    assert folder_family(tiny_sd).name == "sd" and require_finetunable(tiny_sd).name == "sd"
    assert pipeline_geometry(tiny_sd) == (16, 2)
    root = tmp_path / "round"
    assert run(main, [f"root={root}", f"pipeline={tiny_sd}", "max_prompts=1", "per_prompt=1",
                      "sampling.num_inference_steps=2"]) == 0
    assert "generate: sampling at 2 DDIM steps, guidance 5, eta 1" in capsys.readouterr().err
    df = rows(root)
    assert list(df["sampler"]) == ["DDIMScheduler"] and list(df["eta"]) == [1.0]


def test_a_flow_folder_whose_vae_does_not_fit_its_transformer_is_refused(flow_folders, tmp_path):
    """FLUX's transformer takes 2x2 packed latents (in_channels = 4 x the VAE's 16 channels): a VAE of
    another model is named before anything loads."""
    import shutil

    for name in ("sd3", "flux"):
        folder = tmp_path / name
        shutil.copytree(flow_folders[name], folder)
        cfg = json.loads((folder / "vae" / "config.json").read_text())
        (folder / "vae" / "config.json").write_text(json.dumps(cfg | {"latent_channels": 8}))
        lineage = "Stable Diffusion 3" if name == "sd3" else "FLUX"
        with pytest.raises(UserError, match=f"8-channel latents and the transformer .* takes 16.*same {lineage} family"):
            pipeline_geometry(folder)
