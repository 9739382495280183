"""The compiled sampling path (core.compile.sampling_unet): the eager images up to float rounding,
one compiled module reused across models and batch sizes, a LoRA policy sampled through its fused
weights, and the oracle's verdicts kept on the shapes model (the figures every report rests on)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import core.compile
from core.compile import resolve_compile
from core.errors import UserError
from core.loading import load_sd_pipeline
from core.sampling import SamplingConfig, generate_images


@pytest.fixture(autouse=True)
def own_compiled_modules(monkeypatch):
    """This module's compiled UNets stay here: no other test samples through them."""
    monkeypatch.setattr(core.compile, "_SAMPLING_UNETS", {})


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_auto_is_decided_by_the_device_alone(monkeypatch):
    """auto: on with CUDA, off on the CPU, whatever a job's size (a stage compiles the same way in
    a workflow as on its own); on without a C++ compiler on the CPU is one clear error."""
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert not resolve_compile("off", "cpu") and resolve_compile("on", "cpu")
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        resolve_compile("on", "cpu")


def test_a_workflows_stages_keep_their_own_compile():
    """make demo and make loop have no compile key of their own: each stage keeps its
    sampling.compile (auto: by the device), set per stage through <stage>_args."""
    from workflows.demo import DemoConfig
    from workflows.round import StageConfigs

    configs = StageConfigs(replace(DemoConfig(), dpok_args=("sampling.compile=on",)))
    out = Path("runs/x")
    assert configs.dpok(out, out, 0, out).sampling.compile == "on"
    assert {configs.generate("ds", "sd", 0, 1).sampling.compile, configs.evaluation([], out, out, out).sampling.compile} == {"auto"}


@pytest.mark.slow
def test_compiled_sampling_reuses_one_module_across_models_and_batches(tiny_sd):
    """A short last batch is padded, a second model's weights are copied into the module compiled
    for the first (no new graph), and each model's images are its eager images up to rounding."""
    from torch._dynamo.utils import counters

    cfg = SamplingConfig(num_inference_steps=3, batch_size=4)
    on, off = replace(cfg, compile="on"), replace(cfg, compile="off")
    prompts = ["one red circle", "two blue squares", "three circles", "one green triangle", "four squares"]
    seeds = list(range(5))
    first = load_sd_pipeline(tiny_sd, device="cpu")
    second = load_sd_pipeline(tiny_sd, device="cpu")
    with torch.no_grad():
        for p in second.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eager = [pixels(generate_images(m, prompts, seeds, off)) for m in (first, second)]
    a = pixels(generate_images(first, prompts, seeds, on))  # 4 + 1 padded to 4: one graph
    graphs = counters["stats"]["unique_graphs"]
    b = pixels(generate_images(second, prompts, seeds, on))
    assert counters["stats"]["unique_graphs"] == graphs  # the second model reused the compiled graph
    assert first.unet._compiled_call_impl is None and second.unet._compiled_call_impl is None  # callers' UNets untouched
    for compiled, ref in ((a, eager[0]), (b, eager[1])):
        assert np.abs(compiled - ref).max() <= 2  # uint8 levels: float rounding, nothing more
    assert np.abs(eager[0] - eager[1]).max() > 10  # the two models really differ


@pytest.mark.slow
def test_a_lora_policy_samples_through_its_fused_weights(tiny_sd):
    """DPOK's sampler through the compiled plain UNet with the adapter fused: the same guided
    output as the adapter-carrying policy, and a short call padded to the fixed rows."""
    from peft import LoraConfig

    from finetune.denoiser import TextCond
    from finetune.policy import DiffusionPolicy, fused_state
    from finetune.scheduler import DDIMSchedule

    pipe = load_sd_pipeline(tiny_sd, device="cpu")
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:  # B starts at zero: make the adapter change the output
                p.normal_(0, 0.2)
    assert not any(".lora_" in k for k in fused_state(unet))
    policy = DiffusionPolicy(unet, DDIMSchedule.from_scheduler(pipe.scheduler, 4, 1.0), guidance_scale=3.0)
    sampler = policy.for_sampling("on", rows=8)
    assert sampler is not policy and sampler.unet.rows == 8
    x, index = torch.randn(3, 4, 16, 16), torch.tensor([0, 1, 2])
    cond, uncond = TextCond(torch.randn(3, 8, 32)), TextCond(torch.randn(3, 8, 32))
    with torch.no_grad():
        want = policy.model_output(unet, x, index, cond, uncond)
        got = sampler.model_output(sampler.unet, x, index, cond, uncond)  # 6 rows padded to 8
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert policy.for_sampling("off", rows=8) is policy


@pytest.mark.slow
def test_compiled_sampling_keeps_the_oracle_verdicts():
    """The shapes model, the default sampling, 256 images at the same seeds: the oracle gives the
    same verdict to at least 97 % of the compiled path's images as to the eager path's."""
    from shapes import SHAPES_SD
    from shapes.oracle import judge
    from shapes.world import prompt_set

    pipe = load_sd_pipeline(SHAPES_SD, device="cpu")
    prompts = [p.text for p in prompt_set("train")]
    texts = [prompts[i % len(prompts)] for i in range(256)]
    seeds = list(range(1000, 1256))
    verdicts = {}
    for mode in ("off", "on"):
        images = generate_images(pipe, texts, seeds, SamplingConfig(compile=mode))
        verdicts[mode] = np.array([judge(im, t).aligned for im, t in zip(images, texts)])
    assert np.mean(verdicts["on"] == verdicts["off"]) >= 0.97
    assert 0.1 < verdicts["off"].mean() < 0.9  # a mix of verdicts, so agreement is not trivial
