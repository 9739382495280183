"""How fast the fine-tuning loops run, against the compute they cannot avoid.

For each configuration the real loops run (``train_dpok`` / ``train_rwl``, the code users run), and,
in the same process on the same tensor shapes and compute settings (compile, micro-batches), the
*bare* passes the algorithm needs are timed alone (the formulas: :func:`bare_passes`).

overhead_ratio = measured time / bare time (1.0 = nothing but the unavoidable passes).
Model FLOP utilisation of the update step (CUDA only): the FLOPs of one minibatch's bare passes
(UNet forward+backward and the reference forward), counted by ``torch.utils.flop_counter`` as
they run eagerly -- so with LoRA the backward counts only the input gradients and adapter
gradients it really computes, not 2x the forward -- times the minibatches of a round, over the
measured update time, against the device's dense bf16 peak.

Configurations: the shapes world (the committed model, the fine-tuning defaults at the bench's
sizes), and on CUDA SD v1.5's architecture with random weights under ``gpu_config`` (the shipped
``finetune/configs/sd15.yaml``).  The bench sets up everything it times: unless ``reward.path``
names a reward model folder, it builds an untrained reward head on the shapes CLIP (shapes
configuration) or on a CLIP ViT-L/14-shaped random CLIP (CUDA configuration); reward *quality*
does not change its speed.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core.compile import compile_unet
from core.config import load_config
from core.loading import load_clip
from finetune.components import load_components, weight_dtype_for
from finetune.config import CONFIGS, FinetuneConfig, Method
from finetune.dpok import train_dpok
from finetune.policy import adapters_disabled
from finetune.run import setup_run
from finetune.rwl import train_rwl
from finetune.sampler import decode_latents, encode_prompts
from reward.model import RewardModel
from reward.reward_fn import RewardSource
from shapes import SHAPES_SD
from shapes.tokenizer import build_tokenizer, text_config_ids
from shapes.world import prompt_set

# Dense bf16 peak of the GPUs we report on (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass(frozen=True)
class BenchConfig:
    output_dir: str = "reports/bench"
    # The shapes-world configuration: the committed model, the fine-tuning defaults with the sizes below
    shapes: bool = True
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
    # The CUDA configuration: SD v1.5's architecture (random weights) under this fine-tuning config,
    # its sizes, sampling and compute settings as a user runs them; rounds and rwl_steps from above.
    gpu_config: str = str(CONFIGS / "sd15.yaml")
    # Also time the sampling forward and the update forward+backward of a fresh UNet eager and
    # compiled, with the compile's seconds (lever_timings): on CUDA by default;
    # on the CPU configuration when asked (why the loop stays eager there: experiments/bench)
    gpu_levers: bool = True
    cpu_levers: bool = False
    # Also time `make demo` stage by stage, eager and with the compiled sampling path (a fresh compile
    # cache, then warm), each demo in a process of its own (tools.demo_bench): about 3 demos long
    demo: bool = False
    demo_args: tuple[str, ...] = ()  # added to each of those demos, e.g. [seed=1]
    demo_runs: tuple[str, ...] = ("eager", "compiled-cold", "compiled-warm")  # which of them (tools.demo_bench.RUNS)


def _timeit(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up (allocations, kernel selection, compilation)
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


def _pass_peak_mb(fn: Callable[[], object], device) -> float | None:
    """Peak CUDA memory (MB) while ``fn`` runs once, everything the process holds included; None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


class _Passes:
    """The bare passes of a run's models with the loops' inputs (contiguous, one timestep per
    row), modes and autocast, so that a compiled UNet runs the loops' graphs: the sampling forward
    (eval mode, no gradient, no autocast: the sampler's weights are already in their dtype), the
    update's forward + backward and the KL reference forward (train mode, autocast; the reference
    without gradient and with the adapter off)."""

    def __init__(self, run, unet=None):
        self.run, self.unet = run, unet or run.comps.unet
        self.t = run.schedule.timesteps.to(run.device)[:1]

    def _call(self, x, cnd):
        return self.unet(x, self.t.repeat(len(x)), encoder_hidden_states=cnd).sample

    def sample_fwd(self, x, cnd):
        self.unet.eval()
        with torch.no_grad():
            self._call(x, cnd)
        self.unet.train()

    def reference_fwd(self, x, cnd):
        self.unet.train()
        off = adapters_disabled(self.unet) if self.run.comps.reference_unet is None else nullcontext()
        with torch.no_grad(), off, self.run.accelerator.autocast():
            self._call(x, cnd)

    def fwd_bwd(self, x, cnd):
        self.unet.train()
        with self.run.accelerator.autocast():
            out = self._call(x, cnd)
        out.float().square().mean().backward()


def _update_pass(cfg: FinetuneConfig) -> tuple[int, int, int, int]:
    """DPOK's round size B, minibatch m, transitions per update pass u (``compute.micro_batch``
    rows, at most m) and UNet rows per transition (2 with guidance)."""
    d = cfg.dpok
    m, rows = d.minibatch_size, 2 if cfg.sampling.guidance_scale != 1.0 else 1
    return d.prompts_per_round * d.samples_per_prompt, m, min(cfg.items_per_pass(rows == 2) or m, m), rows


def bare_passes(run, cfg: FinetuneConfig, repeats: int, reward=None) -> dict:
    """Seconds of the unavoidable passes of one DPOK round and one RWL step on ``run``'s models, at
    the loops' row counts (``compute.micro_batch`` rows per update pass when set), and on CUDA the
    FLOPs of one update minibatch and each pass's peak memory.

    DPOK round (B samples, T steps, k trained steps per sample, minibatch m in parts of u
    transitions, u = micro_batch / 2; guidance doubles rows):
      sample  T x UNet forward at 2B (no grad) + text encoder at B
      reward  VAE decode at B + reward model at B
      update  ceil(Bk/m) x [ceil(m/u) x (UNet forward+backward at 2u + UNet forward at 2u, the KL
              reference without grad) + optimizer step]
    RWL step (batch b, half D_model and half D_pre; the guided loss runs the D_model rows with and
    without the prompt, so a part holds u = micro_batch / 2 of them and micro_batch of D_pre):
      2 x text encoder at b/2 + ceil(b/2u) x UNet forward+backward at 2u
      + ceil(b/2 / micro_batch) x UNet forward+backward at micro_batch + optimizer step
    """
    d, dev, pipe = cfg.dpok, run.device, run.comps.pipe
    sync, passes = _sync(dev), _Passes(run)
    b, m, u, cfg_rows = _update_pass(cfg)
    c, h, w = run.latent_shape
    prompts = (run.prompts * b)[:b]
    cond, _ = encode_prompts(pipe, prompts, dev)
    dtype = next(run.comps.unet.parameters()).dtype

    def rows(n):  # n rows of latents and text embeddings
        return (torch.randn(n, c, h, w, device=dev, dtype=dtype), cond.repeat(math.ceil(n / b), 1, 1)[:n].to(dtype))

    def opt_step():
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)

    x2b, xu = rows(2 * b), rows(cfg_rows * u)
    latents = torch.randn(b, c, h, w, device=dev)
    images = decode_latents(pipe.vae, latents)
    half = max(1, cfg.rwl.batch_size // 2)
    guided = cfg.rwl.guided_loss and cfg.sampling.guidance_scale > 1
    um, up = (min(cfg.items_per_pass(g) or half, half) for g in (guided, False))
    xr_model, xr_pre = rows(2 * um if guided else um), rows(up)
    timed = {
        "text_encoder_B": lambda: encode_prompts(pipe, prompts, dev),
        "unet_fwd_2B": lambda: passes.sample_fwd(*x2b),
        "vae_decode_B": lambda: decode_latents(pipe.vae, latents),
        "reward_B": lambda: (reward or run.reward)(images, prompts),
        "unet_fwd_bwd_2u": lambda: passes.fwd_bwd(*xu),
        "unet_ref_fwd_2u": lambda: passes.reference_fwd(*xu),
        "optimizer_step": opt_step,
        "rwl_text_encoder": lambda: encode_prompts(pipe, prompts[:half], dev),
        "rwl_fwd_bwd_model": lambda: passes.fwd_bwd(*xr_model),
        "rwl_fwd_bwd_pre": lambda: passes.fwd_bwd(*xr_pre),
    }
    out = {k: _timeit(fn, repeats, sync) for k, fn in timed.items()}
    n_mb, n_micro = math.ceil(b * d.steps_per_sample / m), math.ceil(m / u)
    out["sample_s"] = run.schedule.num_steps * out["unet_fwd_2B"] + out["text_encoder_B"]
    out["reward_s"] = out["vae_decode_B"] + out["reward_B"]
    out["update_s"] = n_mb * (n_micro * (out["unet_fwd_bwd_2u"] + out["unet_ref_fwd_2u"]) + out["optimizer_step"])
    out["rwl_step_s"] = (2 * out["rwl_text_encoder"] + math.ceil(half / um) * out["rwl_fwd_bwd_model"]
                         + math.ceil(half / up) * out["rwl_fwd_bwd_pre"] + out["optimizer_step"])
    out["minibatches_per_round"] = n_mb
    if torch.device(dev).type == "cuda":
        with torch.compiler.set_stance("force_eager"):  # the counter sees eager operators only
            flops = count_flops(lambda: (passes.fwd_bwd(*xu), passes.reference_fwd(*xu)))
        out["update_flops_per_minibatch"] = n_micro * flops
        out["peak_mb"] = {k: _pass_peak_mb(timed[k], dev) for k in
                          ("unet_fwd_2B", "vae_decode_B", "reward_B", "unet_fwd_bwd_2u", "rwl_fwd_bwd_model")}
    run.optimizer.zero_grad(set_to_none=True)
    return out


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs that ``fn`` executes, forward and backward (multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def lever_timings(run, cfg: FinetuneConfig, repeats: int) -> dict[str, dict[str, float]]:
    """Eager (``off``) and compiled (``on``), on a fresh copy of the run's UNet with its adapter
    (loaded anew, so no compiled code is shared with the loop's): seconds of the sampling forward at
    2B rows and of the update forward+backward at the loop's rows (as :func:`bare_passes`), and the
    seconds their first calls took beyond that (``compile_s``); eager, also the update pass with
    gradient checkpointing, and (CUDA) the peak memory of both."""
    dev = run.device
    b, _, u, cfg_rows = _update_pass(cfg)
    c, h, w = run.latent_shape
    cond, _ = encode_prompts(run.comps.pipe, (run.prompts * b)[:b], dev)
    sync, out = _sync(dev), {}
    for mode in ("off", "on"):
        comps = load_components(replace(cfg, compute=replace(cfg.compute, compile="off")), dev,
                                weight_dtype_for(run.accelerator))
        compile_unet(comps.unet, mode == "on")
        passes = _Passes(run, comps.unet)
        dtype = next(comps.unet.parameters()).dtype
        x2b, c2b = torch.randn(2 * b, c, h, w, device=dev, dtype=dtype), torch.cat([cond, cond]).to(dtype)
        x2u, c2u = x2b[:cfg_rows * u], c2b[:cfg_rows * u]
        t0 = time.perf_counter()
        passes.sample_fwd(x2b, c2b)
        passes.fwd_bwd(x2u, c2u)
        sync()
        first = time.perf_counter() - t0
        out[mode] = {"sample_fwd_2B": _timeit(lambda: passes.sample_fwd(x2b, c2b), repeats, sync),
                     "update_fwd_bwd_2u": _timeit(lambda: passes.fwd_bwd(x2u, c2u), repeats, sync)}
        out[mode]["compile_s"] = max(0.0, first - sum(out[mode].values()))
        if mode == "off":  # compute.gradient_checkpointing's trade: time and peak memory of the update pass
            peak = _pass_peak_mb(lambda: passes.fwd_bwd(x2u, c2u), dev)
            comps.unet.enable_gradient_checkpointing()
            out[mode]["update_fwd_bwd_2u_checkpointed"] = _timeit(lambda: passes.fwd_bwd(x2u, c2u), repeats, sync)
            if peak is not None:
                out[mode] |= {"update_peak_mb": peak,
                              "update_peak_mb_checkpointed": _pass_peak_mb(lambda: passes.fwd_bwd(x2u, c2u), dev)}
        del comps, passes
        if torch.device(dev).type == "cuda":
            torch.cuda.empty_cache()
    return out


def shapes_config(cfg: BenchConfig, pipeline: str, out: str, method: Method) -> FinetuneConfig:
    """The shapes-world configuration the bench runs: the fine-tuning defaults (fp32) with the
    bench's sizes, DPOK's window every step and no tail (the bench's sizes predate the shipped
    window; RWL's learning rate), no checkpoints or grids (they are not what it times)."""
    d = FinetuneConfig()
    return replace(
        d, method=method, output_dir=out, mixed_precision="no", sample_grid_every=0,
        model=replace(d.model, pipeline=pipeline), reward=cfg.reward,
        sampling=replace(d.sampling, num_inference_steps=cfg.num_inference_steps),
        prompts=replace(d.prompts, eval_prompts=("one red circle",)), optim=replace(d.optim, lr=3e-4),
        dpok=replace(d.dpok, rounds=cfg.rounds, prompts_per_round=cfg.prompts_per_round,
                     samples_per_prompt=cfg.samples_per_prompt, steps_per_sample=cfg.steps_per_sample,
                     window=(0, None), tail_steps=0, minibatch_size=cfg.minibatch_size, checkpoint_every_rounds=0),
        rwl=replace(d.rwl, steps=cfg.rwl_steps, batch_size=cfg.rwl_batch_size, samples_per_prompt=1,
                    pretrain_per_prompt=1, checkpoint_every_steps=0))


def gpu_config(cfg: BenchConfig, pipeline: str, out: str, method: Method, prompts_file: str) -> FinetuneConfig:
    """The CUDA configuration: ``cfg.gpu_config`` as a user runs it, with the bench's rounds and
    RWL steps, no checkpoints or grids.  ``prompts_file`` (:func:`write_bench_prompts`) holds one
    DPOK round's worth of prompts, so that RWL's D_model, one sample each, is sampled at the same
    batch shape as a DPOK round (its one-off sampling is not what the bench times)."""
    f = load_config(FinetuneConfig, Path(cfg.gpu_config), [])
    return replace(
        f, method=method, output_dir=out, sample_grid_every=0, curve_every=0, seed=0,
        model=replace(f.model, pipeline=pipeline), reward=cfg.reward,
        prompts=replace(f.prompts, prompts_file=prompts_file, eval_prompts=("one red circle",)),
        dpok=replace(f.dpok, rounds=cfg.rounds, checkpoint_every_rounds=0),
        rwl=replace(f.rwl, steps=cfg.rwl_steps, samples_per_prompt=1, pretrain_per_prompt=1, checkpoint_every_steps=0))


def write_bench_prompts(cfg: BenchConfig, path: Path) -> str:
    """One DPOK round's worth of shapes-world train prompts of ``cfg.gpu_config``, one per line."""
    d = load_config(FinetuneConfig, Path(cfg.gpu_config), []).dpok
    n = d.prompts_per_round * d.samples_per_prompt
    path.write_text("\n".join(([p.text for p in prompt_set("train")] * n)[:n]) + "\n")
    return str(path)


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
    levers: dict | None = None  # lever_timings: seconds eager ("off") and compiled ("on")
    compute: dict | None = None  # the run's compute settings (compile, micro_batch, gradient_checkpointing)
    pass_peak_mb: dict | None = None  # peak CUDA memory of each bare pass, the models included
    date: str | None = None  # UTC day of the run


def _reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def bench_pipeline(cfg: BenchConfig, name: str, make_cfg: Callable[[str, Method], FinetuneConfig],
                   levers: bool = False, on_result: Callable[[list], None] = lambda results: None
                   ) -> list[BenchResult]:
    """Time the DPOK and RWL loops of ``make_cfg(output_dir, method)`` against their bare passes;
    ``on_result`` sees the results so far after each one (and after the levers), so a run cut
    short keeps what it measured."""
    results = []
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        dpok_cfg = make_cfg(f"{tmp}/dpok", "dpok")
        d = dpok_cfg.dpok
        loop_device = "cuda" if torch.cuda.is_available() else "cpu"  # the accelerator's default
        _reset_peak_memory(loop_device)
        train_dpok(dpok_cfg, progress=False, on_round=lambda r: rows.append(r))
        peak_mb = _peak_memory_mb(loop_device)
        warm = rows[1:] or rows
        sample = statistics.median(r.seconds_sample for r in warm)
        reward_t = statistics.median(r.seconds_reward for r in warm)
        update = statistics.median(r.seconds_update for r in warm)
        run, _ = setup_run(make_cfg(f"{tmp}/bare", "dpok"), None)
        device = str(run.device)
        bare = bare_passes(run, dpok_cfg, cfg.repeats)
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
        compute = asdict(dpok_cfg.compute)
        first = rows[0]  # the warm-up round: compiling happens there
        results.append(BenchResult(
            name=name, method="dpok", device=device, overhead_ratio=measured / bare_total, measured_s=measured,
            bare_s=bare_total, split_s={"sample": sample, "reward": reward_t, "update": update,
                                        "bare_sample": bare["sample_s"], "bare_reward": bare["reward_s"],
                                        "bare_update": bare["update_s"],
                                        "first_round": first.seconds_sample + first.seconds_reward + first.seconds_update},
            images_per_s=b / sample, transitions_per_s=b * d.steps_per_sample / update,
            peak_memory_mb=peak_mb, mfu_update=mfu, mfu_bare_update=mfu_bare,
            update_tflops_per_minibatch=flops_mb / 1e12 if flops_mb else None, gpu=gpu, compute=compute,
            pass_peak_mb=bare.get("peak_mb"), date=day,
            notes=f"B={b} samples, T={dpok_cfg.sampling.num_inference_steps} steps, {d.steps_per_sample} trained per "
                  f"sample, minibatch {d.minibatch_size}, CFG"))
        on_result(results)
        steps = []
        rwl_cfg = make_cfg(f"{tmp}/rwl", "rwl")
        t_last = [time.perf_counter()]

        def on_step(_row):
            now = time.perf_counter()
            steps.append(now - t_last[0])
            t_last[0] = now

        _reset_peak_memory(device)
        train_rwl(rwl_cfg, progress=False, on_step=on_step)
        per_step = statistics.median(steps[2:] or steps)
        rwl_first = steps[0] if steps else float("nan")  # the first step compiles
        results.append(BenchResult(
            name=name, method="rwl", device=device, overhead_ratio=per_step / bare["rwl_step_s"],
            measured_s=per_step, bare_s=bare["rwl_step_s"], split_s={"setup_and_first_step": rwl_first},
            images_per_s=float("nan"), transitions_per_s=rwl_cfg.rwl.batch_size / per_step,
            peak_memory_mb=_peak_memory_mb(device), gpu=gpu, compute=compute, date=day,
            notes=f"batch {rwl_cfg.rwl.batch_size} (half D_model, half D_pre)"))
        on_result(results)
        if levers:
            results[0].levers = lever_timings(run, dpok_cfg, cfg.repeats)
            on_result(results)
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
        if r.pass_peak_mb:
            lines.append(f"- {r.name}/{r.method} peak MB of each bare pass: "
                         f"{json.dumps({k: round(v) for k, v in r.pass_peak_mb.items()})}")
        if r.levers:
            lines.append(f"- {r.name}/{r.method} bare passes, seconds eager and compiled: "
                         f"{json.dumps({k: {p: round(v, 4) for p, v in t.items()} for k, t in r.levers.items()})}")
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
