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
Model FLOP utilisation of the update step (CUDA only) counts the UNet's FLOPs with
``torch.utils.flop_counter`` (forward; backward = 2x forward) against the device's peak.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from data.loading import SHAPES_SD
from finetune.config import FinetuneConfig, RewardConfig
from pipelines.config import load_config

# Dense bf16 peak of the GPUs we report on (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass(frozen=True)
class BenchConfig:
    output_dir: str = "reports/bench"
    cpu_pipeline: str = str(SHAPES_SD)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rounds: int = 3  # DPOK rounds timed (the first one is a warm-up and not counted)
    prompts_per_round: int = 8
    samples_per_prompt: int = 4
    num_steps: int = 20
    steps_per_sample: int = 10
    minibatch_size: int = 32
    rwl_steps: int = 12
    rwl_batch_size: int = 32
    repeats: int = 3  # bare-pass timings: median of this many
    gpu: bool = True  # run the CUDA configuration when a GPU is present
    gpu_samples: int = 16  # SD v1.5 at 512x512: samples per round
    gpu_minibatch: int = 8


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


def bare_passes(run, cfg: FinetuneConfig, repeats: int, reward=None) -> dict[str, float]:
    """Seconds of the unavoidable passes of one DPOK round and one RWL step on ``run``'s models."""
    from finetune.sampler import decode_latents, encode_prompts

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

    def unet_fwd_bwd(x, cnd):
        with acc.autocast():
            out = unet(x, t_all[:1].expand(len(x)), encoder_hidden_states=cnd).sample
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
    run.optimizer.zero_grad(set_to_none=True)
    return out


def unet_flops(unet, latent_shape, text_shape, device) -> float:
    """FLOPs of one UNet forward at batch 1 (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *latent_shape, device=device, dtype=next(unet.parameters()).dtype)
    cnd = torch.randn(1, *text_shape, device=device, dtype=x.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500], device=device), encoder_hidden_states=cnd)
    return float(counter.get_total_flops())


def _finetune_cfg(cfg: BenchConfig, pipeline: str, out: str, method: str, extra=()) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [
        f"method={method}", f"output_dir={out}", f"model.pipeline={pipeline}", "sample_grid_every=0",
        "checkpoint_every=0", f"reward.kind={cfg.reward.kind}", f"reward.path={cfg.reward.path}",
        f"sampling.num_steps={cfg.num_steps}", f"dpok.rounds={cfg.rounds}",
        f"dpok.prompts_per_round={cfg.prompts_per_round}", f"dpok.samples_per_prompt={cfg.samples_per_prompt}",
        f"dpok.steps_per_sample={cfg.steps_per_sample}", f"dpok.minibatch_size={cfg.minibatch_size}",
        f"rwl.steps={cfg.rwl_steps}", f"rwl.batch_size={cfg.rwl_batch_size}", "rwl.samples_per_prompt=1",
        "rwl.pretrain_per_prompt=1", *extra])


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
    peak_memory_mb: float
    notes: str = ""
    mfu_update: float | None = None
    unet_gflops_per_call: float | None = None


def bench_pipeline(cfg: BenchConfig, name: str, pipeline: str, extra=()) -> list[BenchResult]:
    from finetune.common import setup_run
    from finetune.dpok import train_dpok
    from finetune.rwl import train_rwl

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        dpok_cfg = _finetune_cfg(cfg, pipeline, f"{tmp}/dpok", "dpok", extra)
        train_dpok(dpok_cfg, progress=False, on_round=lambda r: rows.append(r))
        warm = rows[1:] or rows
        sample = statistics.median(r.seconds_sample for r in warm)
        reward_t = statistics.median(r.seconds_reward for r in warm)
        update = statistics.median(r.seconds_update for r in warm)
        run, _ = setup_run(_finetune_cfg(cfg, pipeline, f"{tmp}/bare", "dpok", extra), None)
        device = str(run.device)
        bare = bare_passes(run, dpok_cfg, cfg.repeats)
        b = cfg.prompts_per_round * cfg.samples_per_prompt
        measured = sample + reward_t + update
        bare_total = bare["sample_s"] + bare["reward_s"] + bare["update_s"]
        mfu = flops = None
        if torch.device(device).type == "cuda":
            ucfg = run.comps.pipe.unet.config
            flops = unet_flops(run.comps.unet, run.latent_shape,
                               (run.comps.pipe.tokenizer.model_max_length, ucfg.cross_attention_dim), device)
            gpu = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
            if peak:
                # per minibatch: fwd+bwd (3x fwd FLOPs) at 2m + reference fwd at 2m
                mb_flops = 4 * flops * 2 * cfg.minibatch_size
                mfu = mb_flops * bare["minibatches_per_round"] / update / (peak * 1e12)
        results.append(BenchResult(
            name=name, method="dpok", device=device, overhead_ratio=measured / bare_total, measured_s=measured,
            bare_s=bare_total, split_s={"sample": sample, "reward": reward_t, "update": update,
                                        "bare_sample": bare["sample_s"], "bare_reward": bare["reward_s"],
                                        "bare_update": bare["update_s"]},
            images_per_s=b / sample, transitions_per_s=b * cfg.steps_per_sample / update,
            peak_memory_mb=_peak_memory_mb(device), mfu_update=mfu,
            unet_gflops_per_call=flops / 1e9 if flops else None,
            notes=f"B={b} samples, T={cfg.num_steps} steps, {cfg.steps_per_sample} trained per sample, "
                  f"minibatch {cfg.minibatch_size}, CFG"))
        steps = []
        rwl_cfg = _finetune_cfg(cfg, pipeline, f"{tmp}/rwl", "rwl", extra)
        t_last = [time.perf_counter()]

        def on_step(_row):
            now = time.perf_counter()
            steps.append(now - t_last[0])
            t_last[0] = now

        train_rwl(rwl_cfg, progress=False, on_step=on_step)
        per_step = statistics.median(steps[2:] or steps)
        results.append(BenchResult(
            name=name, method="rwl", device=device, overhead_ratio=per_step / bare["rwl_step_s"],
            measured_s=per_step, bare_s=bare["rwl_step_s"], split_s={},
            images_per_s=float("nan"), transitions_per_s=cfg.rwl_batch_size / per_step,
            peak_memory_mb=_peak_memory_mb(device), notes=f"batch {cfg.rwl_batch_size} (half D_model, half D_pre)"))
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

    from data.shapes.tokenizer import build_tokenizer, text_config_ids

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
