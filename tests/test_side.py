"""DiffCon's side network (core.side, model.parameterisation=side): its shape, that a fresh one is
the backbone, that DPOK's update reuses the backbone outputs recorded while sampling (the same
loss, no backbone pass), and the whole path on a tiny SD-1.5-shaped model on CPU: train (DPOK and
RWL), save, load as a model with lambda set at load, generate, continue with init=."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.loading import load_model, resolve_model, with_side_strength
from core.side import SIDE_DIR, SIDE_FILE, SideUNet, build_side, side_config
from finetune.config import FinetuneConfig

SD15_UNET = dict(in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8, sample_size=64,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)


def test_side_config_is_a_small_unet_fed_x_t_and_eps_pre():
    from diffusers import UNet2DConditionModel

    c = side_config(SD15_UNET, 0.15)
    assert c["in_channels"] == 8 and c["out_channels"] == 4 and c["cross_attention_dim"] == 768
    assert c["block_out_channels"] == [48, 96, 192, 192]
    assert all(w % c["attention_head_dim"] == 0 for w in c["block_out_channels"])
    with torch.device("meta"):
        side = sum(p.numel() for p in UNet2DConditionModel(**c).parameters())
        backbone = sum(p.numel() for p in UNet2DConditionModel(**SD15_UNET).parameters())
    assert side < 0.03 * backbone  # DiffCon: ~12 M beside SD's 860 M


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from tools.random_models import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("side") / "sd-v1-5")


def _unet(sd15):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(sd15 / "unet")


def test_a_fresh_side_network_is_the_backbone_and_strength_scales_it(sd15):
    base = _unet(sd15)
    side = SideUNet(base, build_side(base.config, 0.25), 1.0)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 32)
    want = base(x, t, encoder_hidden_states=c).sample
    out = side(x, t, encoder_hidden_states=c)
    assert torch.equal(out.sample, want) and torch.equal(out.eps_pre, want)
    torch.nn.init.normal_(side.side.conv_out.weight)
    g = side(x, t, encoder_hidden_states=c).sample - want
    assert g.abs().max() > 0
    side.strength = 0.5
    torch.testing.assert_close(side(x, t, encoder_hidden_states=c).sample - want, g / 2, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in side.base.parameters())


def side_cfg(sd15, out, *extra):
    return load_config(FinetuneConfig, None, [
        "method=dpok", f"output_dir={out}", f"model.pipeline={sd15}", "model.parameterisation=side",
        "reward.kind=oracle", "sampling.num_inference_steps=4", "dpok.rounds=1", "dpok.prompts_per_round=2",
        "dpok.samples_per_prompt=2", "dpok.window=[0,null]", "dpok.tail_steps=0", "dpok.steps_per_sample=2",
        "dpok.minibatch_size=4", "optim.lr=1e-2", "sample_grid_every=0", "curve_every=0",
        "prompts.eval_prompts=[one circle, two squares]", *extra])


def test_dpok_update_reuses_the_recorded_backbone_outputs(sd15, tmp_path):
    """The loss from the recorded eps_pre equals the loss that runs the backbone again, and with
    them the update runs no backbone pass and no reference pass."""
    from finetune.dpok import _policy_loss
    from finetune.run import setup_run
    from finetune.sampler import encode_prompts, sample_trajectories

    run, _ = setup_run(side_cfg(sd15, tmp_path / "run"), None)
    policy = run.policy
    torch.nn.init.normal_(policy.unet.side.conv_out.weight, std=0.1)  # a side network that has learnt
    prompts = ["one circle", "one circle", "two squares", "two squares"]
    cond, uncond = encode_prompts(run.comps.pipe, prompts, run.device)
    traj = sample_trajectories(policy, cond, uncond, run.latent_shape, torch.Generator().manual_seed(0), prompts)
    assert traj.eps_pre.shape == (4, traj.num_steps, 2, *run.latent_shape)
    adv = torch.randn(4, traj.num_steps)
    samples, steps = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3])
    calls = []
    hook = policy.unet.base.register_forward_hook(lambda *a: calls.append(1))
    reused = _policy_loss(run.accelerator, policy, traj, adv, samples, steps, run.cfg.dpok)
    assert not calls  # neither the policy step nor its KL reference ran the backbone
    hook.remove()
    again = _policy_loss(run.accelerator, policy, replace(traj, eps_pre=None), adv, samples, steps, run.cfg.dpok)
    for a, b in zip(reused, again):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    reused[-1].backward()
    assert policy.unet.side.conv_out.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_side_network_runs_save_load_generate_and_continue(sd15, tmp_path):
    from core.sampling import SamplingConfig, generate_images
    from finetune.dpok import train_dpok

    out = train_dpok(side_cfg(sd15, tmp_path / "dpok", "optim.lr=0.05"), progress=False).output_dir
    assert json.loads((out / SIDE_DIR / SIDE_FILE).read_text())["strength"] == 1.0
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    ref = resolve_model(out)
    assert ref.side == out / SIDE_DIR and ref.adapter is None and ref.fingerprint.startswith(resolve_model(sd15).fingerprint)
    sampling = SamplingConfig(num_inference_steps=4, batch_size=2)
    prompts, seeds = ["one circle", "two squares"], [0, 1]

    def images(model_ref):
        return np.stack([np.asarray(i) for i in generate_images(load_model(model_ref, device="cpu"), prompts, seeds, sampling)])

    base, tuned = images(resolve_model(sd15)), images(ref)
    assert not np.array_equal(base, tuned)  # the trained side network changes the model
    off = with_side_strength(ref, 1e-12)  # lambda at load: ~0 is the backbone again
    assert off.fingerprint != ref.fingerprint
    assert np.abs(images(off).astype(int) - base.astype(int)).max() <= 1
    with pytest.raises(UserError, match="no side-network run"):
        with_side_strength(resolve_model(sd15), 0.5)


@pytest.mark.slow
def test_a_side_run_continues_with_init_and_rwl_trains_it(tiny_sd, tmp_path):
    """The closed loop's next round: init= a side run loads its side network; RWL trains one too."""
    from finetune.dpok import train_dpok
    from finetune.rwl import train_rwl

    first = train_dpok(side_cfg(tiny_sd, tmp_path / "dpok", "optim.lr=0.05"), progress=False).output_dir
    rwl = side_cfg(tiny_sd, tmp_path / "rwl", "method=rwl", f"init={first}", "rwl.steps=2", "rwl.batch_size=2",
                   "rwl.samples_per_prompt=1", "rwl.pretrain_per_prompt=1", "rwl.checkpoint_every_steps=0")
    from finetune.run import setup_run

    run, _ = setup_run(replace(rwl, output_dir=str(tmp_path / "peek")), None)
    saved = load_model(resolve_model(first), device="cpu").unet.side.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in run.comps.unet.side.state_dict().items())  # init= loaded it
    result = train_rwl(rwl, progress=False)
    assert np.isfinite(result.history[-1]["loss"]) and (result.output_dir / SIDE_DIR / SIDE_FILE).is_file()
    with pytest.raises(UserError, match="side_width"):
        train_dpok(side_cfg(tiny_sd, tmp_path / "wider", f"init={first}", "model.side_width=0.5"), progress=False)


def test_a_side_run_says_it_saved_the_side_network():
    """Issue 74 item 11: make finetune's last line named "the whole pipeline" for a side-network run."""
    from typing import get_args

    from finetune.config import Parameterisation
    from pipelines.finetune import SAVED

    assert SAVED["side"] == "the side network in side/" and set(SAVED) == set(get_args(Parameterisation))


def test_the_side_output_reaches_the_dpok_and_rwl_losses(sd15, tmp_path):
    """Issue 76: a finite difference along a direction added to g_phi's output moves DPOK's loss
    (recorded eps_pre, guidance rows [uncond; cond]) and RWL's guided denoising loss as autograd says."""
    from finetune.dpok import _policy_loss
    from finetune.run import setup_run
    from finetune.objective import DenoisingObjective
    from finetune.sampler import encode_prompts, sample_trajectories

    run, _ = setup_run(side_cfg(sd15, tmp_path / "run"), None)
    policy, side = run.policy, run.comps.unet.side
    assert {id(p) for g in run.optimizer.param_groups for p in g["params"]} == {id(p) for p in side.parameters()}
    torch.nn.init.normal_(side.conv_out.weight, std=0.1)
    prompts = ["one circle", "one circle", "two squares", "two squares"]
    cond, uncond = encode_prompts(run.comps.pipe, prompts, run.device)
    traj = sample_trajectories(policy, cond, uncond, run.latent_shape, torch.Generator().manual_seed(0), prompts)
    adv = torch.randn(4, traj.num_steps, generator=torch.Generator().manual_seed(1))
    objective = DenoisingObjective(run.comps.pipe.scheduler)
    noise = torch.randn(4, *run.latent_shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([50, 300, 600, 900])
    latents = traj.final_latents
    losses = {
        # the noisier steps: at the last one sigma_t is so small that the loss is far from linear at any h
        "dpok": lambda: _policy_loss(run.accelerator, policy, traj, adv, np.arange(4), np.array([0, 1, 0, 1]),
                                     run.cfg.dpok)[-1],
        "rwl": lambda: objective.loss(run, latents, cond, uncond, noise, t, 5.0)[0].mean()}
    state = {"h": 0.0, "out": None}
    v = None

    def nudge(module, args, output):
        nonlocal v
        if v is None:
            v = torch.randn(output.sample.shape, generator=torch.Generator().manual_seed(3))
        sample = output.sample + state["h"] * v
        if sample.requires_grad:
            sample.retain_grad()
        state["out"] = sample
        return type(output)(sample=sample)

    hook = side.register_forward_hook(nudge)
    for name, loss in losses.items():
        v, state["h"] = None, 0.0
        side.zero_grad(set_to_none=True)
        loss().backward()
        autograd = float((state["out"].grad * v).sum())
        with torch.no_grad():
            state["h"] = 1e-4
            up = float(loss())
            state["h"] = -1e-4
            down = float(loss())
        assert abs(autograd) > 0, name
        assert (up - down) / 2e-4 == pytest.approx(autograd, rel=1e-2), name
    hook.remove()
