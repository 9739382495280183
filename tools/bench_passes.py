"""The bare passes a fine-tuning loop cannot avoid, timed alone on the loop's shapes and compute
settings (:func:`bare_passes`), their FLOPs (:func:`count_flops`) and the eager-against-compiled
levers (:func:`lever_timings`); :mod:`tools.bench` compares the real loops with them."""

from __future__ import annotations

import math
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable

import torch

from core.compile import compile_unet
from core.families import pipeline_family
from finetune.components import load_components, weight_dtype_for
from finetune.denoiser import TextCond, denoiser_for
from finetune.config import FinetuneConfig
from finetune.policy import adapters_disabled
from finetune.sampler import decode_latents, encode_prompts


def timeit(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up (allocations, kernel selection, compilation)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync_fn(device) -> Callable[[], None]:
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def peak_memory_mb(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def pass_peak_mb(fn: Callable[[], object], device) -> float | None:
    """Peak CUDA memory (MB) while ``fn`` runs once, everything the process holds included; None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


class Passes:
    """The bare passes of a run's denoiser (a UNet, or a flow family's transformer, called as its
    family calls it: finetune.denoiser) with the loops' inputs (contiguous, one timestep per row,
    the text as :class:`TextCond`), modes and autocast, so that a compiled UNet runs the loops' graphs: the sampling forward
    (eval mode, no gradient, no autocast: the sampler's weights are already in their dtype), the
    update's forward + backward and the KL reference forward (train mode, autocast; the reference
    without gradient and with the adapter off)."""

    def __init__(self, run, unet=None):
        self.run, self.unet = run, unet or run.comps.unet
        self.t = run.schedule.timesteps.to(run.device)[:1]
        self.denoise = denoiser_for(pipeline_family(run.comps.pipe))

    def _call(self, x, cnd):
        return self.denoise(self.unet, x, self.t.repeat(len(x)), cnd, 1.0)[0]

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


def update_pass(cfg: FinetuneConfig) -> tuple[int, int, int, int]:
    """DPOK's round size B, minibatch m, transitions per update pass u (``compute.micro_batch``
    rows, at most m) and UNet rows per transition (2 with guidance)."""
    d = cfg.dpok
    m, rows = d.minibatch_size, 2 if cfg.sampling.guidance_scale != 1.0 else 1
    return d.prompts_per_round * d.samples_per_prompt, m, min(cfg.items_per_pass(rows == 2) or m, m), rows


def sampling_calls(cfg: FinetuneConfig) -> int:
    """UNet calls of one DPOK sampling chain: the stochastic steps up to the window's end, then a
    deterministic tail of ``dpok.tail_steps`` calls (finetune.sampler.sample_trajectories), or all
    ``sampling.num_inference_steps`` steps without a tail."""
    return cfg.dpok_window[1] + cfg.dpok.tail_steps if cfg.dpok.tail_steps else cfg.sampling.num_inference_steps


def bare_passes(run, cfg: FinetuneConfig, repeats: int, reward=None) -> dict:
    """Seconds of the unavoidable passes of one DPOK round and one RWL step on ``run``'s models, at
    the loops' row counts (``compute.micro_batch`` rows per update pass when set), and on CUDA the
    FLOPs of one update minibatch and each pass's peak memory.

    DPOK round (B samples, T UNet calls a chain (:func:`sampling_calls`), k trained steps per
    sample, minibatch m in parts of u transitions, u = micro_batch / 2; guidance doubles rows):
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
    sync, passes = sync_fn(dev), Passes(run)
    b, m, u, cfg_rows = update_pass(cfg)
    c, h, w = run.latent_shape
    prompts = (run.prompts * b)[:b]
    t5 = cfg.sampling.max_sequence_length
    cond = encode_prompts(pipe, prompts, dev, t5)[0]
    dtype = next(run.comps.unet.parameters()).dtype

    def rows(n):  # n rows of latents and text conditioning
        return torch.randn(n, c, h, w, device=dev, dtype=dtype), cond[torch.arange(n) % b]

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
        "text_encoder_B": lambda: encode_prompts(pipe, prompts, dev, t5),
        "unet_fwd_2B": lambda: passes.sample_fwd(*x2b),
        "vae_decode_B": lambda: decode_latents(pipe.vae, latents),
        "reward_B": lambda: (reward or run.reward.score)(images, prompts),
        "unet_fwd_bwd_2u": lambda: passes.fwd_bwd(*xu),
        "unet_ref_fwd_2u": lambda: passes.reference_fwd(*xu),
        "optimizer_step": opt_step,
        "rwl_text_encoder": lambda: encode_prompts(pipe, prompts[:half], dev, t5),
        "rwl_fwd_bwd_model": lambda: passes.fwd_bwd(*xr_model),
        "rwl_fwd_bwd_pre": lambda: passes.fwd_bwd(*xr_pre),
    }
    out = {k: timeit(fn, repeats, sync) for k, fn in timed.items()}
    n_mb, n_micro = math.ceil(b * d.steps_per_sample / m), math.ceil(m / u)
    out["sample_s"] = sampling_calls(cfg) * out["unet_fwd_2B"] + out["text_encoder_B"]
    out["reward_s"] = out["vae_decode_B"] + out["reward_B"]
    out["update_s"] = n_mb * (n_micro * (out["unet_fwd_bwd_2u"] + out["unet_ref_fwd_2u"]) + out["optimizer_step"])
    out["rwl_step_s"] = (2 * out["rwl_text_encoder"] + math.ceil(half / um) * out["rwl_fwd_bwd_model"]
                         + math.ceil(half / up) * out["rwl_fwd_bwd_pre"] + out["optimizer_step"])
    out["minibatches_per_round"] = n_mb
    if torch.device(dev).type == "cuda":
        with torch.compiler.set_stance("force_eager"):  # the counter sees eager operators only
            flops = count_flops(lambda: (passes.fwd_bwd(*xu), passes.reference_fwd(*xu)))
        out["update_flops_per_minibatch"] = n_micro * flops
        out["peak_mb"] = {k: pass_peak_mb(timed[k], dev) for k in
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
    b, _, u, cfg_rows = update_pass(cfg)
    c, h, w = run.latent_shape
    cond = encode_prompts(run.comps.pipe, (run.prompts * b)[:b], dev)[0]  # the levers are a UNet's (SD)
    sync, out = sync_fn(dev), {}
    for mode in ("off", "on"):
        comps = load_components(replace(cfg, compute=replace(cfg.compute, compile="off")), dev,
                                weight_dtype_for(run.accelerator))
        compile_unet(comps.unet, mode == "on")
        passes = Passes(run, comps.unet)
        dtype = next(comps.unet.parameters()).dtype
        x2b, c2b = torch.randn(2 * b, c, h, w, device=dev, dtype=dtype), TextCond.cat([cond, cond])
        x2u, c2u = x2b[:cfg_rows * u], c2b[:cfg_rows * u]
        t0 = time.perf_counter()
        passes.sample_fwd(x2b, c2b)
        passes.fwd_bwd(x2u, c2u)
        sync()
        first = time.perf_counter() - t0
        out[mode] = {"sample_fwd_2B": timeit(lambda: passes.sample_fwd(x2b, c2b), repeats, sync),
                     "update_fwd_bwd_2u": timeit(lambda: passes.fwd_bwd(x2u, c2u), repeats, sync)}
        out[mode]["compile_s"] = max(0.0, first - sum(out[mode].values()))
        if mode == "off":  # compute.gradient_checkpointing's trade: time and peak memory of the update pass
            peak = pass_peak_mb(lambda: passes.fwd_bwd(x2u, c2u), dev)
            comps.unet.enable_gradient_checkpointing()
            out[mode]["update_fwd_bwd_2u_checkpointed"] = timeit(lambda: passes.fwd_bwd(x2u, c2u), repeats, sync)
            if peak is not None:
                out[mode] |= {"update_peak_mb": peak,
                              "update_peak_mb_checkpointed": pass_peak_mb(lambda: passes.fwd_bwd(x2u, c2u), dev)}
        del comps, passes
        if torch.device(dev).type == "cuda":
            torch.cuda.empty_cache()
    return out
