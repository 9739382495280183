"""Tier 2: a fine-tuning run continues from an earlier one (init=), round after round of the loop:
the continued run starts from the init run's weights, the KL reference stays the base model, the
lineage chains, and every unusable init is refused before the output folder is touched."""

import json
import shutil

import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.loading import load_sd_pipeline, model_fingerprint
from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from finetune.lineage import LINEAGE_FILE, chain
from finetune.run import setup_run
from test_finetune_dpok import tiny_cfg

torch.set_num_threads(2)


def _unet_out(unet, seed=0):
    """One UNet call on fixed random input (latents 4x16x16, text 2x?x32)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500, 10]), encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def first(tiny_sd, tmp_path_factory):
    """A finished 1-round LoRA DPOK run: the round before."""
    out = tmp_path_factory.mktemp("init") / "round0"
    train_dpok(tiny_cfg(tiny_sd, out, "dpok.rounds=1"), progress=False)
    return out


def test_continued_lora_run_starts_from_init_and_keeps_the_base_as_kl_reference(tiny_sd, first, tmp_path):
    run, state = setup_run(tiny_cfg(tiny_sd, tmp_path / "round1", "dpok.rounds=1", f"init={first}"), None)
    assert state is None
    unet = run.accelerator.unwrap_model(run.comps.unet)
    # the init run's adapter, as diffusers loads it onto the base
    with_init = load_sd_pipeline(tiny_sd, device="cpu")
    with_init.load_lora_weights(str(first))
    assert torch.allclose(_unet_out(unet), _unet_out(with_init.unet), atol=1e-5)
    # the KL reference (adapter disabled) is the base model, not init
    base = load_sd_pipeline(tiny_sd, device="cpu").unet
    from finetune.policy import adapters_disabled

    with adapters_disabled(unet):
        assert torch.allclose(_unet_out(unet), _unet_out(base), atol=1e-6)
    assert not torch.allclose(_unet_out(unet), _unet_out(base), atol=1e-4)  # init did move the model
    # and it differs from a fresh run's start (a new random adapter)
    fresh, _ = setup_run(tiny_cfg(tiny_sd, tmp_path / "fresh", "dpok.rounds=1"), None)
    assert not torch.allclose(_unet_out(fresh.accelerator.unwrap_model(fresh.comps.unet)), _unet_out(unet), atol=1e-5)
    run.accelerator.end_training()
    fresh.accelerator.end_training()


def test_lineage_chains_back_to_the_base(tiny_sd, first, tmp_path):
    second = tmp_path / "round1"
    result = train_dpok(tiny_cfg(tiny_sd, second, "dpok.rounds=1", f"init={first}"), progress=False)
    l0 = json.loads((first / LINEAGE_FILE).read_text())
    l1 = json.loads((second / LINEAGE_FILE).read_text())
    assert l0["init"] is None and l0["base"]["fingerprint"] == model_fingerprint(tiny_sd)
    assert l1["init"]["path"] == str(first.resolve()) and l1["init"]["lineage"] == l0
    assert json.loads((second / "metrics.json").read_text())["lineage"] == l1 == result.metrics["lineage"]
    assert l1["reward"] == {"kind": "oracle", "oracle": "graded"} and l1["method"] == "dpok" and l1["seed"] == 0
    assert l1["prompts"]["split"] == "train" and l1["prompts"]["count"] > 0 and len(l1["prompts"]["sha256"]) == 64
    run, _ = setup_run(tiny_cfg(tiny_sd, tmp_path / "round2", "dpok.rounds=1", f"init={second}"), None)
    assert chain(run.lineage) == [str(second.resolve()), str(first.resolve())]
    run.accelerator.end_training()


def test_full_unet_init_and_base_reference(tiny_sd, tmp_path):
    full = ["model.parameterisation=full", "dpok.rounds=1"]
    train_dpok(tiny_cfg(tiny_sd, tmp_path / "a", *full), progress=False)
    run, _ = setup_run(tiny_cfg(tiny_sd, tmp_path / "b", *full, f"init={tmp_path / 'a'}"), None)
    trained = load_sd_pipeline(tmp_path / "a", device="cpu").unet
    base = load_sd_pipeline(tiny_sd, device="cpu").unet
    unet = run.accelerator.unwrap_model(run.comps.unet)
    assert torch.allclose(_unet_out(unet), _unet_out(trained), atol=1e-6)
    assert torch.allclose(_unet_out(run.comps.reference_unet), _unet_out(base), atol=1e-6)
    assert not torch.allclose(_unet_out(trained), _unet_out(base), atol=1e-4)
    run.accelerator.end_training()


def test_resume_wins_over_init(tiny_sd, first, tmp_path):
    out = tmp_path / "r"
    cfg = tiny_cfg(tiny_sd, out, "dpok.rounds=3", f"init={first}")

    def stop(row):
        if row.round == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpok(cfg, progress=False, on_round=stop)
    run, state = setup_run(cfg, None)
    assert state is not None and state["round"] == 2
    now = run.comps.trainable_state()
    assert all(torch.equal(now[k], v) for k, v in state["trainable"].items())
    with_init = load_sd_pipeline(tiny_sd, device="cpu")
    with_init.load_lora_weights(str(first))
    assert not torch.allclose(_unet_out(run.accelerator.unwrap_model(run.comps.unet)), _unet_out(with_init.unet),
                              atol=1e-5)  # the checkpoint's weights, not init's
    run.accelerator.end_training()


def _refused(cfg_args, tiny_sd, out, message):
    with pytest.raises(UserError, match=message):
        cfg = tiny_cfg(tiny_sd, out, *cfg_args)
        train_dpok(cfg, progress=False)
    assert not out.exists()  # refused before the output folder was touched


def test_unusable_init_is_refused_before_anything_is_written(tiny_sd, first, tmp_path):
    out = tmp_path / "out"
    _refused([f"init={tmp_path / 'nowhere'}"], tiny_sd, out, "not a fine-tuning run folder")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(first / "config.yaml", no_weights / "config.yaml")
    _refused([f"init={no_weights}"], tiny_sd, out, "has no trained weights")
    _refused([f"init={first}", "model.lora_rank=2"], tiny_sd, out, r"model.lora_rank=4.*this run has model.lora_rank=2")
    _refused([f"init={first}", "model.parameterisation=full"], tiny_sd, out, "model.parameterisation=lora")
    other = tmp_path / "other-sd"
    shutil.copytree(tiny_sd, other)
    sched = other / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "steps_offset": 0}, indent=1))
    assert model_fingerprint(other) != model_fingerprint(tiny_sd)
    _refused([f"init={first}", f"model.pipeline={other}"], tiny_sd, out, "another base model")


def test_rwl_continues_from_a_dpok_round(tiny_sd, first, tmp_path):
    from finetune.rwl import train_rwl

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one red circle\ntwo blue squares\n")
    cfg = load_config(FinetuneConfig, None, [
        "method=rwl", f"output_dir={tmp_path / 'rwl'}", f"model.pipeline={tiny_sd}", "reward.kind=oracle",
        "sampling.num_inference_steps=3", f"prompts.prompts_file={prompts}", "rwl.samples_per_prompt=2",
        "rwl.pretrain_per_prompt=2", "rwl.steps=1", "rwl.batch_size=4", "sample_grid_every=0",
        "rwl.checkpoint_every_steps=0", "prompts.eval_prompts=[one circle]", f"init={first}"])
    result = train_rwl(cfg, progress=False)
    lin = result.metrics["lineage"]
    assert lin["method"] == "rwl" and lin["init"]["path"] == str(first.resolve())
    assert lin["prompts"]["file"] == str(prompts.resolve()) and lin["prompts"]["count"] == 2
