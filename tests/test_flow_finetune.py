"""Tier 2: fine-tuning the flow-matching families (issue 72) on tiny random SD3- and FLUX-format
folders (tools.random_models) on CPU: DPOK on Flow-GRPO's SDE through make finetune's entry, the
LoRA on the transformer that stock diffusers loads, make generate / make eval / init= from a flow
run, the schedule against the pipelines' own, and the refusals."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.errors import UserError
from finetune.config import FinetuneConfig
from pipelines.cli import run
from test_bad_input_cli import one_error_line, tree
from tools.random_models import build_tiny_flux, build_tiny_sd3

SIZE = ["sampling.height=32", "sampling.width=32"]  # FLUX's native size is 1024 px whatever the folder
TINY_DPOK = ["method=dpok", "reward.kind=oracle", "sampling.num_inference_steps=4", "dpok.rounds=2",
             "dpok.prompts_per_round=2", "dpok.samples_per_prompt=2", "dpok.window=[0,3]", "dpok.tail_steps=1",
             "dpok.steps_per_sample=2", "dpok.minibatch_size=4", "optim.lr=1e-2", "dpok.checkpoint_every_rounds=1",
             "dpok.advantage_scale=group", "sample_grid_every=2", "prompts.eval_prompts=[one circle, two squares]",
             "sampling.guidance_scale=3.5", *SIZE]


@pytest.fixture(scope="module")
def flow_bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow-bases")
    return {"sd3": build_tiny_sd3(d / "sd3", image_size=32), "flux": build_tiny_flux(d / "flux", image_size=32)}


@pytest.fixture(scope="module")
def flow_runs(flow_bases, tmp_path_factory):
    """One tiny DPOK run per flow family through make finetune's entry (pipelines.finetune.main):
    the SDE window, an ODE tail, CFG for SD3 and FLUX.1-dev's distilled guidance, checkpoints."""
    from pipelines.finetune import main

    d = tmp_path_factory.mktemp("flow-runs")
    for name, base in flow_bases.items():
        assert run(main, [f"output_dir={d / name}", f"model.pipeline={base}", *TINY_DPOK]) == 0
    return {name: d / name for name in flow_bases}


def transformer_output(transformer, family_name: str, seed: int = 0) -> torch.Tensor:
    """One forward of a flow family's transformer through fine-tuning's call (finetune.denoiser)
    on fixed random latents, timestep and text conditioning."""
    from core.families import FAMILIES
    from finetune.denoiser import TextCond, denoiser_for

    family = next(f for f in FAMILIES.values() if f.name == family_name)
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    x = torch.randn(2, 16, 4, 4, generator=g)
    embeds = torch.randn(2, 7, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(2, cfg.pooled_projection_dim, generator=g)
    text = TextCond(embeds, pooled, torch.zeros(7, 3) if family_name == "flux" else None)
    with torch.no_grad():
        return denoiser_for(family)(transformer, x, torch.tensor([900.0, 400.0]), text, 3.5)[0]


# -- DPOK end to end -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_awm_updates_a_flow_lora_from_whole_images(flow_bases, tmp_path, name):
    """dpok.update=awm (finetune.awm): the round's images, advantage-weighted flow-matching loss plus
    the anchor; no step log-probs (kl, clip 0), a matching loss and a drift from the base that
    grows from 0, and a LoRA that changes the transformer; the AWM loss at the base (drift 0) is
    mean(A l) alone."""
    import diffusers

    from pipelines.finetune import main

    out = tmp_path / "awm"
    assert run(main, [f"output_dir={out}", f"model.pipeline={flow_bases[name]}", *TINY_DPOK, "dpok.update=awm",
                      "dpok.awm_draws=2"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert all(h["kl"] == 0 and h["clip_fraction"] == 0 and h["matching"] > 0 for h in history)
    assert history[0]["drift"] < history[-1]["drift"] and history[-1]["grad_norm"] > 0
    cls = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")
    stock = cls.from_pretrained(flow_bases[name])
    before = transformer_output(stock.transformer, name)
    stock.load_lora_weights(out)
    assert not torch.allclose(before, transformer_output(stock.transformer, name), atol=1e-4)


def test_the_awm_loss_at_the_base_model_is_the_advantage_weighted_matching_loss(flow_bases, tmp_path):
    """awm_terms at the LoRA's initial (zero) update: drift 0, loss = mean(A l), and l the flow
    objective's own per-example loss at the same draws."""
    from finetune.awm import awm_terms
    from finetune.objective import training_objective
    from finetune.run import setup_run

    run_, _ = setup_run(_cfg(flow_bases["sd3"], 3, f"output_dir={tmp_path / 'r'}", "sampling.guidance_scale=3.5",
                             "reward.kind=oracle"), None)
    objective = training_objective(run_.comps.pipe)
    cond, uncond = run_.encode_prompts(["one circle", "two squares"])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, *run_.latent_shape, generator=g)
    noise, sigma = objective.draw(2, run_.latent_shape, g, "cpu")
    adv = torch.tensor([1.5, -0.5])
    with torch.no_grad():
        weighted, matching, drift, loss = awm_terms(run_, objective, x0, cond, uncond, noise, sigma, adv, 3.5, 1.0)
        per_example = objective.loss(run_, x0, cond, uncond, noise, sigma, 3.5)[0]
    assert float(drift) == 0.0
    torch.testing.assert_close(weighted, (adv * per_example).mean())
    torch.testing.assert_close(loss, weighted)
    torch.testing.assert_close(matching, per_example.mean())



@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_dpok_runs_and_saves_a_lora_stock_diffusers_loads(flow_bases, flow_runs, name):
    """The run trains (finite statistics, a gradient), saves transformer.* LoRA weights with their
    adapter config, and a stock pipeline's load_lora_weights gives the transformer that
    core.loading's fused load gives (what make generate / make eval sample)."""
    import diffusers
    from safetensors import safe_open

    from core.loading import load_model, resolve_model

    out = flow_runs[name]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and len(metrics["history"]) == 2
    for key in ("reward_mean", "kl", "clip_fraction", "approx_kl", "loss", "grad_norm"):
        assert np.isfinite(metrics["final"][key]), key
    assert metrics["final"]["grad_norm"] > 0 and (out / "samples" / "round-0002.png").exists()
    with safe_open(out / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(".add_q_proj." in k for k in keys)  # the joint attention's text stream is adapted too
    assert meta["transformer.r"] == 4 and "add_k_proj" in meta["transformer.target_modules"]

    cls = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")
    stock = cls.from_pretrained(flow_bases[name])
    before = transformer_output(stock.transformer, name)
    stock.load_lora_weights(out)
    after = transformer_output(stock.transformer, name)
    assert not torch.allclose(before, after, atol=1e-4)  # the trained adapter changes the model
    fused = load_model(resolve_model(out), device="cpu")
    torch.testing.assert_close(transformer_output(fused.transformer, name), after, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_saved_lora_reproduces_the_trained_transformer(flow_bases, tmp_path, name):
    """save_result's file, loaded by stock diffusers (StableDiffusion3Pipeline / FluxPipeline
    .load_lora_weights), gives the trained transformer's output within 1e-5."""
    import diffusers

    from finetune.checkpoints import save_result
    from finetune.components import load_components, make_accelerator

    cfg = load_config(FinetuneConfig, None, [f"output_dir={tmp_path / 'run'}", f"model.pipeline={flow_bases[name]}",
                                             "model.lora_alpha=8", *SIZE])
    comps = load_components(cfg, torch.device("cpu"), torch.float32)
    with torch.no_grad():  # an adapter that has learnt something (lora_B starts at zero)
        for n, p in comps.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    trained = transformer_output(comps.unet, name)
    (tmp_path / "run").mkdir()
    save_result(make_accelerator(cfg, tmp_path / "run"), comps, cfg, tmp_path / "run", {"final": {}})
    cls = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")
    stock = cls.from_pretrained(flow_bases[name])
    stock.load_lora_weights(tmp_path / "run")
    torch.testing.assert_close(transformer_output(stock.transformer, name), trained, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_generate_eval_and_init_take_a_flow_run(flow_bases, flow_runs, tiny_clip, tmp_path):
    """make generate samples the run (base + LoRA), make eval compares it with its base, and
    init= continues it in a new run of the same base."""
    from pipelines.evaluate import main as evaluate
    from pipelines.finetune import main as finetune
    from pipelines.generate import main as generate

    sd3_run = flow_runs["sd3"]
    root = tmp_path / "round"
    assert run(generate, [f"root={root}", f"pipeline={sd3_run}", "max_prompts=1", "per_prompt=2",
                          "sampling.num_inference_steps=2"]) == 0
    assert len(list(root.rglob("*.png"))) == 2
    (tmp_path / "prompts.txt").write_text("one circle\ntwo squares\n")
    report = tmp_path / "report"
    assert run(evaluate, [f"base={flow_bases['flux']}", f"models=[m={flow_runs['flux']}]", f"clip={tiny_clip}",
                          "reward.kind=oracle", f"prompts_file={tmp_path}/prompts.txt", "samples_per_prompt=1",
                          "sampling.num_inference_steps=2", *SIZE, f"output_dir={report}"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["models"]) >= {"base", "m"}
    assert run(finetune, [f"output_dir={tmp_path / 'next'}", f"model.pipeline={flow_bases['sd3']}",
                          f"init={sd3_run}", *TINY_DPOK, "dpok.rounds=1", "sample_grid_every=0"]) == 0
    lineage = json.loads((tmp_path / "next" / "lineage.json").read_text())
    assert lineage["init"]["path"] == str(sd3_run.resolve())


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_full_flow_fine_tuning_saves_a_pipeline_stock_diffusers_loads_and_init_continues_it(flow_bases, tmp_path,
                                                                                             name):
    """model.parameterisation=full trains every transformer weight: the run folder is a whole
    pipeline that the family's stock class loads, with a transformer other than the base's (the
    text encoders and VAE the base's), and init= continues it into a second full run."""
    import diffusers

    from pipelines.finetune import main

    full = ["model.parameterisation=full", "dpok.rounds=1", "sample_grid_every=0"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert run(main, [f"output_dir={first}", f"model.pipeline={flow_bases[name]}", *TINY_DPOK, *full]) == 0
    assert json.loads((first / "metrics.json").read_text())["final"]["grad_norm"] > 0
    cls = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")
    base, trained = cls.from_pretrained(flow_bases[name]), cls.from_pretrained(first)
    assert not torch.allclose(transformer_output(base.transformer, name), transformer_output(trained.transformer, name),
                              atol=1e-4)
    for a, b in zip(base.vae.parameters(), trained.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    from finetune.lineage import load_init_weights  # what init= loads: the first run's transformer, whole
    cfg = load_config(FinetuneConfig, None, [f"model.pipeline={flow_bases[name]}", f"init={first}", *full])
    load_init_weights(base.transformer, cfg)
    torch.testing.assert_close(transformer_output(base.transformer, name), transformer_output(trained.transformer, name))
    assert run(main, [f"output_dir={second}", f"model.pipeline={flow_bases[name]}", f"init={first}",
                      *TINY_DPOK, *full]) == 0
    assert json.loads((second / "lineage.json").read_text())["init"]["path"] == str(first.resolve())


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_rwl_trains_on_the_flow_matching_loss(flow_bases, tmp_path, name):
    """METHOD=rwl on a flow base: D_model sampled by the flow model, D_pre a dataset root (here
    make generate's round of the base at the run's size), the reward-weighted flow-matching loss;
    the saved LoRA loads in stock diffusers and changes the transformer."""
    import diffusers

    from finetune.flow_rwl import FlowMatchingObjective
    from pipelines.finetune import main
    from pipelines.generate import main as generate

    pre = tmp_path / "pre"
    assert run(generate, [f"root={pre}", f"pipeline={flow_bases[name]}", "max_prompts=2", "per_prompt=2",
                          "sampling.num_inference_steps=2", *SIZE]) == 0
    (tmp_path / "prompts.txt").write_text("one circle\ntwo squares\n")
    out = tmp_path / "rwl"
    assert run(main, ["method=rwl", f"output_dir={out}", f"model.pipeline={flow_bases[name]}", "reward.kind=oracle",
                      f"prompts.prompts_file={tmp_path}/prompts.txt", f"rwl.pretrain_source={pre}",
                      "rwl.samples_per_prompt=2", "rwl.weighting=exp", "rwl.steps=2", "rwl.batch_size=4",
                      "sampling.num_inference_steps=3", "sample_grid_every=0", "optim.lr=1e-2", *SIZE]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["d_pre"]["images"] == 4 and np.isfinite(metrics["final"]["loss"])
    assert metrics["final"]["grad_norm"] > 0
    cls = getattr(diffusers, "StableDiffusion3Pipeline" if name == "sd3" else "FluxPipeline")
    stock = cls.from_pretrained(flow_bases[name])
    before = transformer_output(stock.transformer, name)
    stock.load_lora_weights(out)
    assert not torch.allclose(before, transformer_output(stock.transformer, name), atol=1e-4)
    # the noise levels: SD3's training levels are shifted by its shift 3 (most draws above 1/2)
    sigma = FlowMatchingObjective(stock.scheduler).draw(4000, (1, 1, 1), torch.Generator().manual_seed(0), "cpu")[1]
    assert 0 < float(sigma.min()) and float(sigma.max()) <= 1
    assert (float(sigma.median()) > 0.7) == (name == "sd3")


def test_a_resumed_flow_run_ends_like_an_uninterrupted_one(flow_bases, tmp_path):
    """FLUX DPOK interrupted after round 1 and resumed from its checkpoint: the same rounds and the
    same LoRA as a run straight through (the adapter, optimizer and rng state are the SD ones)."""
    from safetensors.torch import load_file

    from finetune.dpok import train_dpok

    def cfg(out):
        return load_config(FinetuneConfig, None, [f"output_dir={out}", f"model.pipeline={flow_bases['flux']}",
                                                  *TINY_DPOK, "sample_grid_every=0"])

    def stop_after_round_1(row):
        if row.round == 1:
            raise KeyboardInterrupt

    straight = train_dpok(cfg(tmp_path / "a"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_dpok(cfg(tmp_path / "b"), progress=False, on_round=stop_after_round_1)
    resumed = train_dpok(cfg(tmp_path / "b"), progress=False)
    drop = ("seconds_sample", "seconds_reward", "seconds_update")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight.history]
    a, b = (load_file(r.output_dir / "pytorch_lora_weights.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- SD3.5 medium's and FLUX.1-dev's shipped configs ---------------------------------------------------

# family: (its config, the size and steps docs/finetune.md computes its memory for, guidance)
SHIPPED = {"sd3": ("sd35.yaml", 10, 4.5), "flux": ("flux.yaml", 6, 3.5)}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_the_shipped_flow_yaml_loads_for_both_methods_and_trains_its_family(flow_bases, tmp_path, name):
    """finetune/configs/sd35.yaml (flux.yaml) loads as it is for DPOK and RWL with an SD3 (FLUX)
    folder, passes the flow family's checks, sets what docs/finetune.md computes its memory for (512
    px, 10 (6) steps of the Flow-SDE every one trained, guidance 4.5 (distilled 3.5), LoRA r32 on the
    family's targets, gradient checkpointing, micro-batches of 8 rows), and a round of it (at the
    tiny model's size) trains."""
    from core.families import folder_family
    from finetune.config import CONFIGS
    from finetune.denoiser import check_finetune_options, lora_targets
    from pipelines.finetune import main

    config, steps, guidance = SHIPPED[name]
    base = flow_bases[name]
    family = folder_family(base)
    for method in ("dpok", "rwl"):
        cfg = load_config(FinetuneConfig, CONFIGS / config, [f"method={method}", f"model.pipeline={base}"])
        check_finetune_options(cfg, family)
        assert (cfg.sampling.height, cfg.sampling.width, cfg.sampling.num_inference_steps) == (512, 512, steps)
        assert cfg.dpok_window == (0, steps) and cfg.dpok.steps_per_sample == steps and cfg.dpok.noise_level == 0.7
        assert cfg.sampling.guidance_scale == guidance and cfg.model.lora_rank == 32
        assert lora_targets(cfg.model, family) == list(family.lora_targets)
        assert cfg.compute.gradient_checkpointing and cfg.compute.micro_batch == 8
    out = tmp_path / "run"
    assert run(main, ["--config", str(CONFIGS / config), f"output_dir={out}", f"model.pipeline={base}",
                      "reward.kind=oracle", *SIZE, "sampling.num_inference_steps=2", "dpok.rounds=1",
                      "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=2",
                      "sample_grid_every=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["grad_norm"] > 0


# -- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["model.parameterisation=side"], "side network is a UNet module"),
    (["region.weight=0.5"], "region-aware fine-tuning"),
])
def test_what_flow_fine_tuning_refuses_is_one_error_and_nothing_written(flow_bases, tmp_path, capsys, args, words):
    from pipelines.finetune import main

    out = tmp_path / "run"
    before = tree(flow_bases["sd3"])
    assert run(main, [f"output_dir={out}", f"model.pipeline={flow_bases['sd3']}", *TINY_DPOK, *args]) == 2
    one_error_line(capsys, words, "Fix:")
    assert not out.exists() and tree(flow_bases["sd3"]) == before


def test_a_guidance_scale_for_a_flux_folder_without_guidance_is_one_error_and_nothing_written(tmp_path, capsys):
    """A schnell-like FLUX folder (no guidance embedding) takes no guidance at all: a guidance scale
    set for it (here CFG-style, 3.5 as FLUX.1-dev's or SD3.5's 4.5 from sd35.yaml) would silently
    do nothing, so make finetune refuses it with the fix; 1 and the untouched default pass."""
    from core.families import folder_family
    from finetune.config import CONFIGS
    from finetune.denoiser import check_finetune_options
    from pipelines.finetune import main

    schnell = build_tiny_flux(tmp_path / "schnell", image_size=32, guidance_embeds=False)
    before = tree(schnell)
    out = tmp_path / "run"
    assert run(main, [f"output_dir={out}", f"model.pipeline={schnell}", *TINY_DPOK]) == 2
    one_error_line(capsys, "without a guidance embedding", "sampling.guidance_scale=3.5 would change nothing",
                   "Fix: set sampling.guidance_scale=1")
    assert run(main, ["--config", str(CONFIGS / "sd35.yaml"), f"output_dir={out}", f"model.pipeline={schnell}",
                      "reward.kind=oracle", *SIZE]) == 2
    one_error_line(capsys, "sampling.guidance_scale=4.5 would change nothing")
    assert not out.exists() and tree(schnell) == before
    family = folder_family(schnell)
    for given in ([], ["sampling.guidance_scale=1"]):
        check_finetune_options(load_config(FinetuneConfig, None, [f"model.pipeline={schnell}", *given]), family)


def test_a_lora_of_another_family_is_refused(flow_bases, flow_runs, tiny_sd, tmp_path, capsys):
    """A flow run as init= of an SD base, and an SD run's LoRA applied to a flow base: one error,
    nothing written."""
    from core.loading import resolve_model
    from finetune.dpok import train_dpok
    from pipelines.finetune import main

    sd_run = tmp_path / "sd-run"
    train_dpok(load_config(FinetuneConfig, None, [
        f"output_dir={sd_run}", f"model.pipeline={tiny_sd}", "reward.kind=oracle", "sampling.num_inference_steps=2",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.window=[0,null]",
        "dpok.tail_steps=0", "dpok.steps_per_sample=1", "sample_grid_every=0"]), progress=False)
    out = tmp_path / "run"
    assert run(main, [f"output_dir={out}", f"model.pipeline={tiny_sd}", f"init={flow_runs['sd3']}", "reward.kind=oracle",
                      "dpok.rounds=1"]) == 2
    one_error_line(capsys, "adapts a flow-matching transformer (SD3 / FLUX)", "Fix:")
    assert not out.exists()
    with pytest.raises(UserError, match="another model than the base"):  # its config names its SD base
        resolve_model(flow_bases["flux"], adapter=sd_run)
    bare = tmp_path / "bare"  # the LoRA file alone: its weights' names say which denoiser it adapts
    bare.mkdir()
    (bare / "pytorch_lora_weights.safetensors").write_bytes((sd_run / "pytorch_lora_weights.safetensors").read_bytes())
    with pytest.raises(UserError, match="adapts a UNet"):
        resolve_model(flow_bases["flux"], adapter=bare)


# -- the schedule --------------------------------------------------------------------------------------

def _cfg(base, steps: int, *extra) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"model.pipeline={base}", f"sampling.num_inference_steps={steps}",
                                              "dpok.window=[0,null]", "dpok.tail_steps=0", "dpok.steps_per_sample=1",
                                              *SIZE, *extra])


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_schedule_is_the_pipelines_own(flow_bases, name):
    """FlowSchedule's sigmas and timesteps are those the stock pipeline steps through for the same
    step count and size: SD3's fixed shift 3, FLUX's dynamic shift mu from its packed token count
    (with FluxPipeline's linspace sigmas); and at noise level a = 0 its SDE step is exactly the
    scheduler's Euler step (Flow-GRPO's SDE without noise is the ODE)."""
    from core.loading import load_sd_pipeline
    from core.sampling import latent_shape
    from finetune.denoiser import make_schedule

    pipe = load_sd_pipeline(flow_bases[name], device="cpu")
    pipe("one circle", num_inference_steps=5, height=32, width=32, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    cfg = _cfg(flow_bases[name], 5)
    schedule = make_schedule(pipe, cfg.sampling, cfg.dpok.noise_level, latent_shape(pipe, 32, 32))
    assert torch.equal(schedule.sigmas, pipe.scheduler.sigmas.float())
    assert torch.equal(schedule.timesteps, pipe.scheduler.timesteps.float())
    assert schedule.sigmas[0] == 1 and schedule.sigmas[-1] == 0
    if name == "flux":  # the dynamic shift moved the levels off FluxPipeline's plain linspace
        assert not torch.allclose(schedule.sigmas[:-1], torch.linspace(1, 0.2, 5).float())

    ode = make_schedule(pipe, cfg.sampling, 1e-9, latent_shape(pipe, 32, 32))
    ode = type(ode)(ode.timesteps, ode.sigmas, 0.0)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    sched = copy.deepcopy(pipe.scheduler)
    for i in range(5):
        sched._step_index = i  # the pipeline's loop is at step i (FluxPipeline fixes the begin index)
        euler = sched.step(v, sched.timesteps[i], x).prev_sample
        step = ode.step(v, x, torch.full((2,), i))
        assert torch.equal(step.mean, euler) and bool((step.std == 0).all())
        assert torch.equal(ode.ode_step(v, x, i, i + 1 if i < 4 else None), euler)


# -- on-policy: the importance ratio is exactly 1 ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd", "sd3", "flux"])
def test_the_importance_ratio_is_one_before_any_update(flow_bases, tiny_sd, tmp_path, name):
    """Flow-GRPO's debug rule: fully on-policy, DPOK's log-prob of each recorded transition,
    recomputed by the training pass, equals the one the sampler recorded, so no ratio is clipped
    and the approximate KL is 0 (a mismatch between the sampling and training paths -- text
    conditioning, dtype, the SDE's mean or std -- would show here, on every family)."""
    from finetune.dpok import _policy_loss, _round_generator, _sample, draw_transitions
    from finetune.run import setup_run

    base = tiny_sd if name == "sd" else flow_bases[name]
    extra = [] if name == "sd" else SIZE
    cfg = load_config(FinetuneConfig, None, [f"output_dir={tmp_path / 'run'}", f"model.pipeline={base}",
                                             *[a for a in TINY_DPOK if a not in SIZE], *extra])
    run_, _ = setup_run(cfg, None)
    gen, rng = _round_generator(cfg, 0, 0, run_.device)
    batch = _sample(run_, gen, rng)
    samples, steps = draw_transitions(rng, batch.traj.batch_size, cfg.dpok_window[1], cfg.dpok.steps_per_sample,
                                      cfg.dpok_window[0])
    adv = torch.ones(batch.traj.batch_size, batch.traj.num_steps)
    run_.comps.unet.train()
    with torch.no_grad():
        kl, clip_fraction, approx_kl, *_ = _policy_loss(run_.accelerator, run_.policy, batch.traj, adv, samples, steps,
                                                        cfg.dpok)
    assert float(clip_fraction) == 0.0
    assert abs(float(approx_kl)) < 1e-6
    assert float(kl) < 1e-6  # the LoRA starts at zero: the policy is the base model
