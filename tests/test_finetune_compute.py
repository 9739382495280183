"""Tier 2: the compute settings change how the passes run, not what they compute: micro-batches
give the whole minibatch's gradients, a compiled UNet the eager one's outputs (tiny models, CPU)."""

import pytest
import torch
from safetensors.torch import load_file

from core.compile import compile_unet, resolve_compile
from core.config import load_config
from core.errors import UserError
from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from finetune.rwl import train_rwl
from finetune.run import micro_batches


def cfg_for(method, sd, out, tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one red circle\ntwo blue squares on a white background\nthree circles\n")
    return load_config(FinetuneConfig, None, [
        f"method={method}", f"output_dir={out}", f"model.pipeline={sd}", "reward.kind=oracle",
        "sampling.num_inference_steps=4", f"prompts.prompts_file={prompts}", "optim.lr=1e-2",
        "sample_grid_every=0", "prompts.eval_prompts=[one circle]",
        "dpok.rounds=2", "dpok.prompts_per_round=2", "dpok.samples_per_prompt=3", "dpok.steps_per_sample=2",
        "dpok.minibatch_size=6", "dpok.window=[0,null]", "dpok.tail_steps=0", "dpok.checkpoint_every_rounds=0",
        "rwl.samples_per_prompt=2", "rwl.pretrain_per_prompt=2", "rwl.steps=3", "rwl.batch_size=6",
        "rwl.checkpoint_every_steps=0", "rwl.weighting=exp", *extra])  # exp: every image carries weight


def lora(out):
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


def without_timings(history):
    return [{k: v for k, v in r.items() if not k.startswith("seconds") and v is not None} for r in history]


@pytest.mark.slow
@pytest.mark.parametrize("method, setting", [
    ("dpok", "compute.micro_batch=4"), ("rwl", "compute.micro_batch=2"), ("dpok", "compute.gradient_checkpointing=true")])
@pytest.mark.slow
def test_compute_settings_train_the_same_model(tiny_sd, tmp_path, method, setting):
    """Minibatch 6 in passes of 4 UNet rows (DPOK: 2 guided transitions each; RWL, 2 rows: 1 guided
    D_model example, or 2 + 1 of the 3 D_pre examples), or with recomputed activations, trains the
    same weights and logs the same statistics as all 6 at once."""
    train = train_dpok if method == "dpok" else train_rwl
    whole = train(cfg_for(method, tiny_sd, tmp_path / "whole", tmp_path), progress=False)
    micro = train(cfg_for(method, tiny_sd, tmp_path / "micro", tmp_path, setting), progress=False)
    a, b = lora(tmp_path / "whole"), lora(tmp_path / "micro")
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Float summation order only: Adam's normalised step can magnify it on a weight whose gradient
    # is near zero, so a rare element may move further; a wrong gradient moves most of them by ~lr.
    assert float((diff > 1e-5).float().mean()) < 0.05 and float(diff.max()) < 1e-3
    assert not all(torch.equal(v, 0 * v) for v in a.values())
    for x, y in zip(without_timings(whole.history), without_timings(micro.history), strict=True):
        assert x == pytest.approx(y, rel=1e-3, abs=1e-5)


def test_micro_batches_cover_every_row_once():
    assert micro_batches(5, None) == [slice(0, 5)]
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batches(4, 8) == [slice(0, 4)]


def test_micro_batch_must_be_positive(tiny_sd, tmp_path):
    with pytest.raises(UserError, match="compute.micro_batch=0"):
        cfg_for("dpok", tiny_sd, tmp_path / "run", tmp_path, "compute.micro_batch=0")


def test_compile_auto_is_on_for_cuda_only():
    assert resolve_compile("auto", "cpu") is False
    assert resolve_compile("auto", "cuda") is True
    assert resolve_compile("on", "cpu") is True and resolve_compile("off", "cuda") is False


@pytest.mark.slow
def test_a_run_resumes_with_other_compute_settings(tiny_sd, tmp_path):
    """compute.* say how the passes run, so a checkpoint resumes under other values."""
    cfg = cfg_for("dpok", tiny_sd, tmp_path / "run", tmp_path, "dpok.checkpoint_every_rounds=1")

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dpok(cfg, progress=False, on_round=stop)
    resumed = train_dpok(cfg_for("dpok", tiny_sd, tmp_path / "run", tmp_path, "dpok.checkpoint_every_rounds=1",
                                 "compute.micro_batch=2"), progress=False)
    assert len(resumed.history) == 2


@pytest.mark.slow
def test_compiled_unet_with_its_adapter_matches_eager(tiny_sd):
    """Compiled in place, with a LoRA adapter: the same outputs and adapter gradients as eager, and
    disabling the adapter (the KL reference) still reaches the compiled blocks."""
    import copy

    from peft import LoraConfig

    from core.loading import load_sd_pipeline
    from finetune.policy import adapters_disabled

    unet = load_sd_pipeline(tiny_sd, device="cpu").unet
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    torch.manual_seed(0)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora" in n)
        if "lora" in n:  # B starts at zero: make the adapter change the output
            p.data.normal_(0, 0.2)
    compiled = copy.deepcopy(unet)
    compile_unet(compiled, True)
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 500])
    text = torch.randn(2, 8, unet.config.cross_attention_dim)
    outs = []
    for model in (unet, compiled):
        y = model(x, t, encoder_hidden_states=text).sample
        y.square().mean().backward()
        with torch.no_grad(), adapters_disabled(model):
            ref = model(x, t, encoder_hidden_states=text).sample
        grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
        outs.append((y.detach(), ref, grads))
    (y0, r0, g0), (y1, r1, g1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y0, r0)  # the adapter changes the output, so the reference really is without it
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)
