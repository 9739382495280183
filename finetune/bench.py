"""How fast the fine-tuning loops run, against the compute they cannot avoid.

For each configuration the real loops run (``train_dpok`` / ``train_rwl``, the code users run), and,
in the same process on the same tensor shapes, the *bare* passes the algorithm needs are timed
alone:

DPOK round (B samples, T steps, k trained steps per sample, minibatch m, guidance doubles batches):
  sample   T x UNet forward at 2B (no grad)  + text encoder at B
  reward   VAE decode at B + reward model at B
  update   ceil(Bk/m) x [UNet forward+backward at 2m + UNet forward at 2m (KL reference, no grad)
           + optimizer step]
RWL step (batch b): 2 x [text encoder at b/2 + UNet forward+backward at b/2] + optimizer step.

overhead_ratio = measured time / bare time (1.0 = nothing but the unavoidable passes).
Model FLOP utilisation of the update step (CUDA only): the FLOPs of one minibatch's bare passes
(UNet forward+backward at 2m and the reference forward at 2m), counted by
``torch.utils.flop_counter`` as they run -- so with LoRA the backward counts only the input
gradients and adapter gradients it really computes, not 2x the forward -- times the minibatches of
a round, over the measured update time, against the device's dense bf16 peak.

The bench sets up everything it times: unless ``reward.path`` names a reward model folder, it
builds an untrained reward head on the shapes CLIP (CPU configuration) or on a CLIP ViT-L/14-shaped
random CLIP (CUDA configuration); reward *quality* does not change its speed.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core.loading import load_clip
from finetune.config import FinetuneConfig, Method, MixedPrecision
from finetune.dpok import train_dpok
from finetune.run import setup_run
from finetune.rwl import train_rwl
from finetune.sampler import decode_latents, encode_prompts
from reward.model import RewardModel
from reward.reward_fn import RewardSource
from shapes import SHAPES_SD
from shapes.tokenizer import build_tokenizer, text_config_ids

# Dense bf16 peak of the GPUs we report on (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass(frozen=True)
class BenchConfig:
    output_dir: str = "reports/bench"
    cpu_pipeline: str = str(SHAPES_SD)
    # reward.path "" (default): the bench builds an untrained reward head to time (see module doc)
    reward: RewardSource = field(default_factory=lambda: RewardSource(path=""))
    rounds: int = 3  # DPOK rounds timed (the first one is a warm-up and not counted)
    prompts_per_round: int = 8
    samples_per_prompt: int = 4
    num_inference_steps: int = 20
    steps_per_sample: int = 10
    minibatch_size: int = 32
    rwl_steps: int = 12
    rwl_batch_size: int = 32
    repeats: int = 3  # bare-pass timings: median of this many
    gpu: bool = True  # run the CUDA configuration when a GPU is present
    gpu_samples: int = 16  # SD v1.5 at 512x512: samples per round
    gpu_minibatch: int = 8
    # Also time the bare update passes with channels_last and with torch.compile (lever_timings):
    # on CUDA by default (compiling SD v1.5's UNet forward and backward takes a minute or two); on
    # the CPU configuration when asked (why the loop runs eager there: docs/finetune.md, Benchmark)
    gpu_levers: bool = True
    cpu_levers: bool = False


def _timeit(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up (allocations, kernel selection)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device) -> Callable[[], None]:
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def _peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bare_passes(run, cfg: FinetuneConfig, repeats: int, reward=None, levers: bool = False) -> dict:
    """Seconds of the unavoidable passes of one DPOK round and one RWL step on ``run``'s models;
    on CUDA also the FLOPs of one update minibatch; with ``levers``, :func:`lever_timings`."""
    d, dev, pipe = cfg.dpok, run.device, run.comps.pipe
    unet, sync = run.comps.unet, _sync(dev)
    b = d.prompts_per_round * d.samples_per_prompt
    m = d.minibatch_size
    c, h, w = run.latent_shape
    prompts = (run.prompts * b)[:b]
    cond, _ = encode_prompts(pipe, prompts, dev)
    t_all = run.schedule.timesteps.to(dev)
    dtype = next(unet.parameters()).dtype
    x2b = torch.randn(2 * b, c, h, w, device=dev, dtype=dtype)
    c2b = torch.cat([cond, cond]).to(dtype)
    x2m, c2m = x2b[:2 * m], c2b[:2 * m]
    acc = run.accelerator

    def unet_fwd(x, cnd):
        with torch.no_grad(), acc.autocast():
            return unet(x, t_all[:1].expand(len(x)), encoder_hidden_states=cnd).sample

    def unet_fwd_bwd(x, cnd, model=unet):
        with acc.autocast():
            out = model(x, t_all[:1].expand(len(x)), encoder_hidden_states=cnd).sample
        out.float().square().mean().backward()

    def opt_step():
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)

    latents = torch.randn(b, c, h, w, device=dev)
    images = decode_latents(pipe.vae, latents)
    out = {
        "text_encoder_B": _timeit(lambda: encode_prompts(pipe, prompts, dev), repeats, sync),
        "unet_fwd_2B": _timeit(lambda: unet_fwd(x2b, c2b), repeats, sync),
        "vae_decode_B": _timeit(lambda: decode_latents(pipe.vae, latents), repeats, sync),
        "reward_B": _timeit(lambda: (reward or run.reward)(images, prompts), repeats, sync),
        "unet_fwd_bwd_2m": _timeit(lambda: unet_fwd_bwd(x2m, c2m), repeats, sync),
        "unet_fwd_2m": _timeit(lambda: unet_fwd(x2m, c2m), repeats, sync),
        "optimizer_step": _timeit(opt_step, repeats, sync),
    }
    n_mb = math.ceil(b * d.steps_per_sample / m)
    out["sample_s"] = run.schedule.num_steps * out["unet_fwd_2B"] + out["text_encoder_B"]
    out["reward_s"] = out["vae_decode_B"] + out["reward_B"]
    out["update_s"] = n_mb * (out["unet_fwd_bwd_2m"] + out["unet_fwd_2m"] + out["optimizer_step"])
    half = max(1, cfg.rwl.batch_size // 2)
    xh, ch = x2b[:half].float(), cond[:half]
    out["rwl_step_s"] = 2 * (_timeit(lambda: encode_prompts(pipe, prompts[:half], dev), repeats, sync)
                             + _timeit(lambda: unet_fwd_bwd(xh.to(dtype), ch.to(dtype)), repeats, sync)) + out["optimizer_step"]
    out["minibatches_per_round"] = n_mb
    if torch.device(dev).type == "cuda":
        out["update_flops_per_minibatch"] = count_flops(lambda: (unet_fwd_bwd(x2m, c2m), unet_fwd(x2m, c2m)))
    if levers:
        out["levers_fwd_bwd_2m_s"] = lever_timings(
            unet, lambda model, x, cnd: unet_fwd_bwd(x, cnd, model), x2m, c2m, repeats, sync)
    run.optimizer.zero_grad(set_to_none=True)
    return out


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs that ``fn`` executes, forward and backward (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def lever_timings(unet: torch.nn.Module, fwd_bwd: Callable, x: torch.Tensor, cond: torch.Tensor,
                  repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Seconds of the bare forward+backward ``fwd_bwd(unet, x, cond)`` under each lever, on the
    same tensors: eager (diffusers' SDPA attention, flash on Hopper in bf16), channels_last memory
    format, and torch.compile (default mode, inductor: C++ kernels on the CPU) of the channels_last
    model, with its compile time.  The UNet is restored to contiguous format afterwards."""
    out = {"eager": _timeit(lambda: fwd_bwd(unet, x, cond), repeats, sync)}
    unet.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    out["channels_last"] = _timeit(lambda: fwd_bwd(unet, xc, cond), repeats, sync)
    compiled = torch.compile(unet)
    t0 = time.perf_counter()
    fwd_bwd(compiled, xc, cond)
    sync()
    out["compile_seconds"] = time.perf_counter() - t0
    out["channels_last+compile"] = _timeit(lambda: fwd_bwd(compiled, xc, cond), repeats, sync)
    unet.to(memory_format=torch.contiguous_format)
    return out


def gpu_config(cfg: BenchConfig) -> BenchConfig:
    """The CUDA configuration: SD v1.5's 50 steps, ``gpu_samples`` samples a round in groups of 4
    per prompt, 10 trained steps per sample, minibatch ``gpu_minibatch``."""
    return replace(cfg, prompts_per_round=max(1, cfg.gpu_samples // 4), samples_per_prompt=4,
                   minibatch_size=cfg.gpu_minibatch, num_inference_steps=50, steps_per_sample=10)


def _finetune_cfg(cfg: BenchConfig, pipeline: str, out: str, method: Method,
                  mixed_precision: MixedPrecision) -> FinetuneConfig:
    """The fine-tuning config the bench runs: the defaults with the bench's sizes, no checkpoints
    or grids (they are not what it times)."""
    d = FinetuneConfig()
    return replace(
        d, method=method, output_dir=out, mixed_precision=mixed_precision, sample_grid_every=0,
        model=replace(d.model, pipeline=pipeline), reward=cfg.reward,
        sampling=replace(d.sampling, num_inference_steps=cfg.num_inference_steps),
        prompts=replace(d.prompts, eval_prompts=("one red circle",)),
        dpok=replace(d.dpok, rounds=cfg.rounds, prompts_per_round=cfg.prompts_per_round,
                     samples_per_prompt=cfg.samples_per_prompt, steps_per_sample=cfg.steps_per_sample,
                     minibatch_size=cfg.minibatch_size, checkpoint_every_rounds=0),
        rwl=replace(d.rwl, steps=cfg.rwl_steps, batch_size=cfg.rwl_batch_size, samples_per_prompt=1,
                    pretrain_per_prompt=1, checkpoint_every_steps=0))


@dataclass
class BenchResult:
    name: str
    method: str
    device: str
    overhead_ratio: float
    measured_s: float  # per DPOK round / per RWL step, warm
    bare_s: float
    split_s: dict
    images_per_s: float  # sampling throughput (DPOK)
    transitions_per_s: float  # denoising transitions trained per second (DPOK update)
    peak_memory_mb: float  # of the real loop (CUDA: max allocated; CPU: max RSS of the process)
    notes: str = ""
    mfu_update: float | None = None  # update step: counted FLOPs / measured time / peak (CUDA)
    mfu_bare_update: float | None = None  # the same FLOPs over the bare passes' time
    update_tflops_per_minibatch: float | None = None
    gpu: str | None = None
    levers_fwd_bwd_s: dict | None = None  # lever_timings of the bare forward+backward


def _reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def bench_pipeline(cfg: BenchConfig, name: str, pipeline: str, mixed_precision: MixedPrecision,
                   levers: bool = False) -> list[BenchResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        dpok_cfg = _finetune_cfg(cfg, pipeline, f"{tmp}/dpok", "dpok", mixed_precision)
        d = dpok_cfg.dpok
        loop_device = "cuda" if torch.cuda.is_available() else "cpu"  # the accelerator's default
        _reset_peak_memory(loop_device)
        train_dpok(dpok_cfg, progress=False, on_round=lambda r: rows.append(r))
        peak_mb = _peak_memory_mb(loop_device)
        warm = rows[1:] or rows
        sample = statistics.median(r.seconds_sample for r in warm)
        reward_t = statistics.median(r.seconds_reward for r in warm)
        update = statistics.median(r.seconds_update for r in warm)
        run, _ = setup_run(_finetune_cfg(cfg, pipeline, f"{tmp}/bare", "dpok", mixed_precision), None)
        device = str(run.device)
        bare = bare_passes(run, dpok_cfg, cfg.repeats, levers=levers)
        b = d.prompts_per_round * d.samples_per_prompt
        measured = sample + reward_t + update
        bare_total = bare["sample_s"] + bare["reward_s"] + bare["update_s"]
        mfu = mfu_bare = gpu = None
        if "update_flops_per_minibatch" in bare:
            gpu = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
            if peak:
                round_flops = bare["update_flops_per_minibatch"] * bare["minibatches_per_round"]
                mfu = round_flops / update / (peak * 1e12)
                mfu_bare = round_flops / bare["update_s"] / (peak * 1e12)
        flops_mb = bare.get("update_flops_per_minibatch")
        results.append(BenchResult(
            name=name, method="dpok", device=device, overhead_ratio=measured / bare_total, measured_s=measured,
            bare_s=bare_total, split_s={"sample": sample, "reward": reward_t, "update": update,
                                        "bare_sample": bare["sample_s"], "bare_reward": bare["reward_s"],
                                        "bare_update": bare["update_s"]},
            images_per_s=b / sample, transitions_per_s=b * d.steps_per_sample / update,
            peak_memory_mb=peak_mb, mfu_update=mfu, mfu_bare_update=mfu_bare,
            update_tflops_per_minibatch=flops_mb / 1e12 if flops_mb else None, gpu=gpu,
            levers_fwd_bwd_s=bare.get("levers_fwd_bwd_2m_s"),
            notes=f"B={b} samples, T={dpok_cfg.sampling.num_inference_steps} steps, {d.steps_per_sample} trained per "
                  f"sample, minibatch {d.minibatch_size}, CFG"))
        steps = []
        rwl_cfg = _finetune_cfg(cfg, pipeline, f"{tmp}/rwl", "rwl", mixed_precision)
        t_last = [time.perf_counter()]

        def on_step(_row):
            now = time.perf_counter()
            steps.append(now - t_last[0])
            t_last[0] = now

        _reset_peak_memory(device)
        train_rwl(rwl_cfg, progress=False, on_step=on_step)
        per_step = statistics.median(steps[2:] or steps)
        results.append(BenchResult(
            name=name, method="rwl", device=device, overhead_ratio=per_step / bare["rwl_step_s"],
            measured_s=per_step, bare_s=bare["rwl_step_s"], split_s={},
            images_per_s=float("nan"), transitions_per_s=rwl_cfg.rwl.batch_size / per_step,
            peak_memory_mb=_peak_memory_mb(device), gpu=gpu,
            notes=f"batch {rwl_cfg.rwl.batch_size} (half D_model, half D_pre)"))
    return results


def write_report(results: list[BenchResult], out: Path, skipped: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    lines = ["# Fine-tuning loop benchmark", "",
             "overhead ratio = measured time / time of the bare passes the algorithm needs (same run, same shapes).", "",
             "| config | method | device | overhead ratio | measured s | bare s | images/s | transitions/s | peak MB | MFU (update) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mfu = f"{100 * r.mfu_update:.1f} %" if r.mfu_update else "-"
        lines.append(f"| {r.name} | {r.method} | {r.device} | {r.overhead_ratio:.3f} | {r.measured_s:.3f} | "
                     f"{r.bare_s:.3f} | {r.images_per_s:.2f} | {r.transitions_per_s:.1f} | {r.peak_memory_mb:.0f} | {mfu} |")
    lines += ["", *[f"- {r.name}/{r.method}: {r.notes}; split {json.dumps({k: round(v, 3) for k, v in r.split_s.items()})}"
                    for r in results]]
    for r in results:
        if r.mfu_update is not None:
            lines.append(f"- {r.name}/{r.method} on {r.gpu}: {r.update_tflops_per_minibatch:.2f} TFLOP per update "
                         f"minibatch (counted); MFU {100 * r.mfu_update:.1f} % of the measured update, "
                         f"{100 * r.mfu_bare_update:.1f} % of the bare passes")
        if r.levers_fwd_bwd_s:
            lines.append(f"- {r.name}/{r.method} bare forward+backward, seconds by lever: "
                         f"{json.dumps({k: round(v, 4) for k, v in r.levers_fwd_bwd_s.items()})}")
    lines += [f"- skipped: {s}" for s in skipped]
    (out / "bench.md").write_text("\n".join(lines) + "\n")


# SD v1.5's architecture (diffusers configs), built with random weights: only speed is measured.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768)


def build_random_sd15(path: Path) -> Path:
    """A StableDiffusionPipeline folder with SD v1.5's UNet, VAE and text-encoder shapes (random
    weights, the shapes tokenizer padded to 77 tokens as SD's is)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    tok.model_max_length = 77
    ids = {**text_config_ids(tok), "max_position_embeddings": 77}
    text = CLIPTextModel(CLIPTextConfig(**{**SD15_TEXT, **ids}))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tok, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


# CLIP ViT-L/14's architecture (transformers config), random weights, for the CUDA bench's reward.
VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14)
VIT_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=77)


def build_random_clip_vitl14(path: Path) -> Path:
    """A CLIPModel folder with ViT-L/14's shapes (random weights, the shapes tokenizer padded to 77
    tokens) and a 224-px CLIPImageProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = build_tokenizer()
    tok.model_max_length = 77
    config = CLIPConfig(text_config={**VIT_L14_TEXT, **text_config_ids(tok), "max_position_embeddings": 77},
                        vision_config=VIT_L14_VISION, projection_dim=768)
    CLIPModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    return Path(path)


def build_reward_model(clip: str | Path, path: Path) -> Path:
    """A reward model folder: an untrained (seeded) head on the CLIP folder ``clip``."""
    RewardModel.build(load_clip(clip, device="cpu")).save_pretrained(path, name="bench")
    return Path(path)
