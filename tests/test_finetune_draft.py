"""DRaFT-K (finetune.draft): the reparameterised chain, the differentiable reward and penalty, and
whole runs on a tiny random SD-format pipeline and a tiny random CLIP reward on CPU."""

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from finetune.config import FinetuneConfig
from finetune.region import outside_change


def test_the_outside_change_has_a_finite_gradient_on_the_kept_pixels_only():
    """At an image equal to its base (a DRaFT run's first step) the norm's gradient is 0, not NaN;
    once it moved, the gradient lands on the kept pixels and nowhere else."""
    base = torch.rand(2, 3, 8, 8)
    keep = torch.ones(2, 8, 8, dtype=torch.bool)
    keep[:, :4] = False  # the top half is the problem region
    same = base.clone().requires_grad_(True)
    outside_change(same, base, keep).sum().backward()
    assert torch.isfinite(same.grad).all() and same.grad.abs().max() == 0
    moved = (base + 0.1 * torch.randn(2, 3, 8, 8)).requires_grad_(True)
    pen = outside_change(moved, base, keep)
    pen.sum().backward()
    assert (pen > 0).all() and torch.isfinite(moved.grad).all()
    assert moved.grad[:, :, :4].abs().max() == 0 and moved.grad[:, :, 4:].abs().min() > 0


def test_the_reparameterised_chain_is_the_sampled_chain(tiny_sd, tmp_path):
    """finetune.sampler.denoise with the chain's per-step noise lands where the sampler does, and
    split at T - K (without, then with gradient) it is the same chain, whose last K steps carry the
    gradient to the LoRA; at eta 0 (noise None) it is the chain of step means."""
    from finetune.run import setup_run
    from finetune.sampler import continue_chain, denoise, encode_prompts

    cfg = load_config(FinetuneConfig, None, ["method=dpok", f"output_dir={tmp_path / 'run'}", f"model.pipeline={tiny_sd}",
                                             "reward.kind=oracle", "sampling.num_inference_steps=4",
                                             "dpok.window=[0, null]", "dpok.tail_steps=0", "dpok.steps_per_sample=2"])
    run, _ = setup_run(cfg, None)
    policy, n = run.policy, 4
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    cond, uncond = encode_prompts(run.comps.pipe, ["one circle", "two squares"], run.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *run.latent_shape), generator=gen)
    sampled, _ = continue_chain(policy, x, 0, n, cond, uncond, gen)
    again = torch.Generator().manual_seed(0)
    torch.randn((2, *run.latent_shape), generator=again)
    noise = torch.stack([torch.randn(x.shape, generator=again) for _ in range(n)])
    with torch.no_grad():
        mid = denoise(policy, x, 0, n - 1, cond, uncond, noise)
    end = denoise(policy, mid, n - 1, n, cond, uncond, noise)
    torch.testing.assert_close(end.detach(), sampled[:, -1], atol=1e-5, rtol=1e-5)
    end.square().mean().backward()
    lora = [p.grad for name, p in policy.unet.named_parameters() if "lora" in name]
    assert all(g is not None for g in lora) and sum(g.abs().sum() for g in lora) > 0
    with torch.no_grad():
        means = x
        for i in range(n):
            means = policy.step(means, torch.full((2,), i), cond, uncond).gaussian.mean
        torch.testing.assert_close(denoise(policy, x, 0, n, cond, uncond), means)


def test_the_learned_reward_carries_a_gradient_and_the_oracle_is_refused(tiny_clip, tmp_path):
    from reward.reward_fn import LearnedReward, OracleReward, Reward
    from tools.random_models import build_reward_model

    reward = LearnedReward.load(build_reward_model(tiny_clip, tmp_path / "reward"), "cpu")
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    prompts = ["one circle", "two squares", "one circle"]
    r = reward.differentiable_score(images, prompts)
    torch.testing.assert_close(r.detach(), reward.score(images.detach(), prompts), atol=1e-5, rtol=1e-5)
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.model.parameters())  # the frozen reward collects nothing
    with pytest.raises(UserError, match="no gradient"):
        OracleReward().differentiable_score(images, prompts)
    numpy_reward = Reward(lambda im, pr: torch.as_tensor(im.detach().numpy().mean((1, 2, 3))))
    with pytest.raises(UserError, match="no gradient"):
        numpy_reward.differentiable_score(images, prompts)


def draft_cfg(sd, reward, out, *extra):
    return load_config(FinetuneConfig, None, [
        "method=draft", f"output_dir={out}", f"model.pipeline={sd}", f"reward.path={reward}",
        "sampling.num_inference_steps=4", "sampling.eta=0", "draft.steps=4", "draft.batch_size=4",
        "draft.checkpoint_every_steps=1", "optim.lr=3e-2", "sample_grid_every=0",
        "prompts.eval_prompts=[one circle, two squares]", *extra])


@pytest.fixture(scope="module")
def reward(tiny_clip, tmp_path_factory):
    from tools.random_models import build_reward_model

    return build_reward_model(tiny_clip, tmp_path_factory.mktemp("draft-reward") / "reward", region=True)


@pytest.mark.slow
def test_each_draft_step_raises_the_objective_of_a_fixed_batch(tiny_sd, reward, tmp_path):
    """Optimizer steps on one batch (same prompts, same noise): the reward rises at every step, so
    the gradient reaches the LoRA with the right sign, through the last K steps, the decoder and the
    reward.  Region-aware with a large beta, the first step leaves the base (the norm's gradient is
    0 there) and the penalty's gradient then pulls the kept pixels back towards the base's."""
    from finetune.draft import _sample, _step_generator, _update
    from finetune.run import setup_run

    def steps(name, *extra):
        cfg = draft_cfg(tiny_sd, reward, tmp_path / name, "optim.lr=1e-3", *extra)
        run, _ = setup_run(cfg, None)
        batch = _sample(run, *_step_generator(cfg, 0, 0, run.device))
        rows = [_update(run, batch) for _ in range(4)]  # each the batch's values before its step
        lora_b = [p for n, p in run.comps.unet.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # they start at 0: the gradient moved them
        return rows

    rewards = [float(r[0].mean()) for r in steps("plain", "draft.backprop_steps=2")]
    assert rewards[0] < rewards[1] < rewards[2] < rewards[3], rewards
    outside = [float(r[1].mean()) for r in steps("region", "region.weight=50", "region.threshold=0.3")]
    assert outside[0] == 0 and outside[1] > 0 and min(outside[2:]) < outside[1], outside


@pytest.mark.slow
def test_a_draft_run_saves_a_lora_diffusers_loads_and_resumes(tiny_sd, reward, tmp_path):
    """A DRaFT-1 run writes its rows, sample grids and a LoRA stock diffusers loads (the images
    change), and a run interrupted after step 2 resumes to the same rows as an uninterrupted one."""
    from diffusers import StableDiffusionPipeline
    from finetune.draft import train_draft

    cfg = draft_cfg(tiny_sd, reward, tmp_path / "a", "sample_grid_every=2")
    result = train_draft(cfg, progress=False)
    out = result.output_dir
    for f in ("pytorch_lora_weights.safetensors", "metrics.json", "config.yaml", "samples/step-0004.png"):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "draft" and len(metrics["history"]) == 4
    assert all(np.isfinite(r["reward_mean"]) and r["grad_norm"] > 0 for r in metrics["history"])

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    kw = dict(num_inference_steps=4, output_type="np", height=32, width=32)
    before = pipe(["two squares"], generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(out)
    after = pipe(["two squares"], generator=torch.Generator().manual_seed(0), **kw).images
    assert np.abs(before - after).mean() > 1e-3  # the trained adapter changes the model
    from core.loading import load_model, resolve_model

    fused = load_model(resolve_model(out), device="cpu")  # make generate / make eval's loader: the run is a model
    ours = fused(["two squares"], generator=torch.Generator().manual_seed(0), **kw).images
    np.testing.assert_allclose(ours, after, atol=1e-4)
    from finetune.dpok import train_dpok  # init=: DPOK continues from the DRaFT run

    cont = train_dpok(load_config(FinetuneConfig, None, [
        "method=dpok", f"output_dir={tmp_path / 'dpok'}", f"model.pipeline={tiny_sd}", f"reward.path={reward}",
        f"init={out}", "sampling.num_inference_steps=4", "dpok.rounds=1", "dpok.prompts_per_round=1",
        "dpok.samples_per_prompt=2", "dpok.window=[0,null]", "dpok.tail_steps=0", "dpok.steps_per_sample=1",
        "dpok.minibatch_size=2", "dpok.checkpoint_every_rounds=0", "sample_grid_every=0",
        "prompts.eval_prompts=[one circle]"]), progress=False)
    assert cont.metrics["lineage"]["init"]["lineage"]["method"] == "draft"

    def interrupt_at_step_2(row):
        if row.step == 2:
            raise KeyboardInterrupt

    cfg = draft_cfg(tiny_sd, reward, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train_draft(cfg, progress=False, on_step=interrupt_at_step_2)
    assert not (tmp_path / "b" / "metrics.json").exists()
    resumed = train_draft(cfg, progress=False)
    drop = ("seconds_sample", "seconds_update")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in h] for h in (resumed.history, result.history)]
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_region_aware_draft_charges_change_outside_the_problem_regions(tiny_sd, reward, tmp_path):
    """region.weight > 0: each step's row has the change from the base model's images outside the
    problem regions, 0 at the first step (the adapter starts as the base) and the objective is the
    reward minus beta x that change; micro-batches and gradient checkpointing run the same steps."""
    from finetune.draft import train_draft

    beta = 5.0
    result = train_draft(draft_cfg(tiny_sd, reward, tmp_path / "r", f"region.weight={beta}", "region.threshold=0.3",
                                   "compute.micro_batch=2", "compute.gradient_checkpointing=true",
                                   "sampling.eta=1.0", "draft.backprop_steps=2", "draft.steps=3"),
                         progress=False)
    rows = result.history
    assert rows[0]["outside_change"] == pytest.approx(0, abs=1e-6)
    assert rows[-1]["outside_change"] > 0
    for r in rows:
        assert r["objective"] == pytest.approx(r["reward_mean"] - beta * r["outside_change"], abs=1e-5)


@pytest.mark.parametrize("case", ["oracle", "k", "flow", "headless"])
def test_refused_draft_runs_write_nothing(tiny_sd, tiny_clip, reward, tmp_path, case):
    """The oracle (no gradient), K above the chain's steps, a flow-matching folder and region.weight
    without a region head are each one error, before anything is written into output_dir."""
    from finetune.draft import train_draft
    from tools.random_models import build_reward_model

    out = tmp_path / "run"
    if case == "oracle":  # through make finetune's entry point, with the shipped draft.yaml
        from pipelines.finetune import main

        with pytest.raises(UserError, match="oracle.*no gradient"):
            main(["method=draft", "reward.kind=oracle", f"output_dir={out}", f"model.pipeline={tiny_sd}"])
    elif case == "k":
        with pytest.raises(UserError, match="draft.backprop_steps=5"):
            draft_cfg(tiny_sd, reward, out, "draft.backprop_steps=5")
    elif case == "flow":
        from tools.random_models import build_tiny_sd3

        flow = build_tiny_sd3(tmp_path / "sd3")
        with pytest.raises(UserError, match="flow-matching"):
            train_draft(draft_cfg(flow, reward, out), progress=False)
    else:
        headless = build_reward_model(tiny_clip, tmp_path / "headless")
        with pytest.raises(UserError, match="no region head"):
            train_draft(draft_cfg(tiny_sd, headless, out, "region.weight=1.0"), progress=False)
    assert not out.exists()


def test_the_shipped_draft_config_is_the_defaults_at_eta_0():
    from core.config import to_dict
    from finetune.config import CONFIGS

    shipped = load_config(FinetuneConfig, CONFIGS / "draft.yaml")
    assert shipped.method == "draft" and shipped.sampling.eta == 0 and shipped.draft.backprop_steps == 1
    defaults = to_dict(load_config(FinetuneConfig, None, ["method=draft", "sampling.eta=0"]))
    assert to_dict(shipped) == defaults
