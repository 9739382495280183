"""Bad input on the own-model path (issue 56): a CLIP whose projection size is not the reward
head's, an SD folder whose VAE does not fit its UNet, D_pre images of mixed sizes, and shapes-world
D_pre for a model that is not a shapes-world one are each one error before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest

from data import Store
from pipelines.cli import run
from shapes.render import render_round
from shapes.world import Prompt
from test_bad_input_cli import finetune, one_error_line, tree


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def own_reward(tmp_path_factory):
    """A tiny CLIP and a reward model folder trained on it (16-dim embeddings)."""
    from tiny_models import make_tiny_clip
    from tools.bench import build_reward_model

    d = tmp_path_factory.mktemp("own-reward")
    clip = make_tiny_clip(d / "clip", image_size=32)
    return dict(clip=clip, reward=build_reward_model(clip, d / "reward"))


def test_a_clip_with_another_projection_size_is_refused_before_writing(own_reward, tiny_sd, tmp_path, capsys):
    from reward.model import RewardModel
    from core.errors import UserError

    moved = tmp_path / "reward"
    shutil.copytree(own_reward["reward"], moved)
    other_clip = tmp_path / "clip-other"
    shutil.copytree(own_reward["clip"], other_clip)
    _edit_json(other_clip / "config.json", projection_dim=24)  # another CLIP at the recorded path
    _edit_json(moved / "reward_config.json", clip_path=str(other_clip.resolve()),
               clip_path_relative="../clip-other", clip_fingerprint=None)
    out = tmp_path / "run"
    assert finetune(f"output_dir={out}", f"model.pipeline={tiny_sd}", f"reward.path={moved}") == 2
    one_error_line(capsys, f"the reward model in {moved}", "16-dim", "24-dim", "model.clip=")
    assert not out.exists()
    with pytest.raises(UserError, match="16-dim"):  # loading it directly says the same
        RewardModel.from_pretrained(moved, device="cpu")


def test_an_sd_folder_whose_vae_does_not_fit_its_unet_is_refused_before_writing(tiny_sd, tmp_path, capsys):
    sd = tmp_path / "sd-mixed"
    shutil.copytree(tiny_sd, sd)
    _edit_json(sd / "vae" / "config.json", latent_channels=16)  # e.g. another family's VAE
    out = tmp_path / "run"
    assert finetune(f"output_dir={out}", f"model.pipeline={sd}", "reward.kind=oracle") == 2
    one_error_line(capsys, "16-channel latents", "takes 4", "same Stable Diffusion family")
    assert not out.exists()


def test_dpre_of_mixed_sizes_is_refused_before_writing(tiny_sd, tmp_path, capsys):
    root = tmp_path / "captions"
    render_round(Store(root), [Prompt.parse("one circle")], per_prompt=2, size=32)
    render_round(Store(root), [Prompt.parse("two squares")], per_prompt=1, size=64)
    before = tree(root)
    out = tmp_path / "run"
    assert finetune("method=rwl", f"output_dir={out}", f"model.pipeline={tiny_sd}", "reward.kind=oracle",
                    f"rwl.pretrain_source={root}") == 2
    one_error_line(capsys, "64x64 (width x height), the model is fine-tuned at 32x32",
                   "1 of 3 are not", "32x32: 2", "64x64: 1")
    assert not out.exists() and tree(root) == before


def test_shapes_dpre_for_a_model_that_is_not_a_shapes_world_one_names_the_key(tiny_sd, tmp_path, capsys):
    sd = tmp_path / "sd-own"
    shutil.copytree(tiny_sd, sd)
    tok = sd / "tokenizer" / "tokenizer.json"
    data = json.loads(tok.read_text())
    data["model"]["vocab"]["cat"] = len(data["model"]["vocab"])  # a vocabulary beyond the shapes world
    tok.write_text(json.dumps(data))
    out = tmp_path / "run"
    assert finetune("method=rwl", f"output_dir={out}", f"model.pipeline={sd}", "reward.kind=oracle") == 2
    one_error_line(capsys, "rwl.pretrain_source=shapes", "not a shapes-world model", "rwl.pretrain_source=datasets/captions")
    assert not out.exists()
    # the shipped sd15.yaml leaves the key at shapes: the same error, not a silent shapes D_pre
    assert finetune("--config", "finetune/configs/sd15.yaml", "method=rwl", f"output_dir={out}",
                    f"model.pipeline={sd}", "reward.kind=oracle", "compute.compile=off") == 2
    one_error_line(capsys, "rwl.pretrain_source=shapes")
    assert not out.exists()
