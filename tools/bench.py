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

Configurations: the shapes world (the committed model under the fine-tuning configs ``make demo``
ships, finetune/configs/<method>.yaml), and on CUDA SD v1.5's architecture with random weights
under ``gpu_config`` (the shipped ``finetune/configs/sd15.yaml``).  Each is the shipped config with
only the bench's own overrides on top (:func:`bench_overrides`: how long it times, no checkpoints or
grids), then the user's ``shapes_args`` / ``gpu_args``.  The bench sets up everything it times: unless ``reward.path``
names a reward model folder, it builds an untrained reward head on the shapes CLIP (shapes
configuration) or on a CLIP ViT-L/14-shaped random CLIP (CUDA configuration); reward *quality*
does not change its speed.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core.config import NonNegativeFloat, PositiveInt, load_config, replace_keys, with_overrides
from finetune.config import CONFIGS, FinetuneConfig, Method, Parameterisation
from finetune.dpok import train_dpok
from finetune.run import setup_run
from finetune.rwl import train_rwl
from reward.reward_fn import RewardSource
from shapes import SHAPES_CLIP, SHAPES_FLOW, SHAPES_SD
from shapes.training.flow import FLOW_SAMPLING
from tools.demo_bench import bench_demo, check_runs
from tools.random_models import build_random_clip_vitl14, build_random_sd15, build_reward_model
from tools.bench_passes import bare_passes, lever_timings, peak_memory_mb
from shapes.world import prompt_set

# Dense bf16 peak of the GPUs we report on (TFLOP/s), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# What an MFU figure counts, written into every CUDA record and the results page beside it.
FLOP_CONVENTION = ("torch.utils.flop_counter on the eager bare passes of one update minibatch (UNet forward+backward "
                   "and the reference forward; matmuls, convolutions and SDPA attention, a multiply-add = 2 FLOPs; "
                   "with LoRA the backward counts only the gradients it computes), over the measured update time, "
                   "against the dense bf16 peak")


@dataclass(frozen=True)
class BenchConfig:
    output_dir: str = "reports/bench"
    # The shapes-world configuration: the committed model under the demo's fine-tuning configs
    # (finetune/configs/<method>.yaml, as `make demo` loads them) with the bench's overrides
    shapes: bool = True
    cpu_pipeline: str = str(SHAPES_SD)
    # Also the flow-matching configuration: the same shipped configs on shapes-flow (SD3 format,
    # sampled with no T5 tokens, as its card says): a flow DPOK sample's cost against an SD one's.
    # Not with region_weight (refused for a flow model); LoRA only (the side network is a UNet's).
    flow: bool = True
    flow_pipeline: str = str(SHAPES_FLOW)
    # reward.path "" (default): the bench builds an untrained reward head to time (see module doc)
    reward: RewardSource = field(default_factory=lambda: RewardSource(path=""))
    # How long each loop is timed (dpok.rounds and rwl.steps of both configurations): DPOK rounds,
    # the first one a warm-up and not counted; RWL steps, the first two not counted
    rounds: PositiveInt = 3
    rwl_steps: PositiveInt = 12
    repeats: int = 3  # bare-pass timings: median of this many
    gpu: bool = True  # run the CUDA configuration when a GPU is present
    # The CUDA configuration: SD v1.5's architecture (random weights) under this fine-tuning config,
    # its sizes, sampling and compute settings as a user runs them (`make finetune CONFIG=...`)
    gpu_config: str = str(CONFIGS / "sd15.yaml")
    # Dotted fine-tuning overrides on top of each configuration's shipped config and the bench's own
    # keys (bench_overrides), e.g. [compute.micro_batch=16] or, for a quick run, [dpok.minibatch_size=4]
    shapes_args: tuple[str, ...] = ()
    gpu_args: tuple[str, ...] = ()
    # Also time the sampling forward and the update forward+backward of a fresh UNet eager and
    # compiled, with the compile's seconds (lever_timings): on CUDA by default;
    # on the CPU configuration when asked (why the loop stays eager there: experiments/bench)
    gpu_levers: bool = True
    cpu_levers: bool = False
    # Also time DPOK's loop with each of these trainable parts (model.parameterisation) in the same
    # process: seconds per round of its update and its sampling (DiffCon's side network against LoRA)
    adapters: tuple[Parameterisation, ...] = ("lora", "side")
    # > 0: both loops run region-aware fine-tuning (region.weight, finetune.region) at this weight,
    # the bench's reward given an untrained region head: what Focus-N-Fix's penalty adds in memory
    # and time (the masks' content does not change either); the bare passes stay plain DPOK's and
    # RWL's, so the overhead ratio counts the penalty's base-model passes as overhead
    region_weight: NonNegativeFloat = 0.0
    # Also time `make demo` stage by stage, eager and with the compiled sampling path (a fresh compile
    # cache, then warm), each demo in a process of its own (tools.demo_bench): about 3 demos long
    demo: bool = False
    demo_args: tuple[str, ...] = ()  # added to each of those demos, e.g. [seed=1]
    demo_runs: tuple[str, ...] = ("eager", "compiled-cold", "compiled-warm")  # which of them (tools.demo_bench.RUNS)


def bench_overrides(cfg: BenchConfig, pipeline: str, out: str, method: Method) -> dict:
    """What the bench sets on a shipped fine-tuning config, by dotted key: the model and reward it
    times, how long it times (``rounds``, ``rwl_steps``), ``region_weight`` when set, and nothing it
    does not time -- no checkpoints, grids or learning curve, one sample grid prompt, and one image
    per prompt for RWL's one-off D_model and D_pre (sampled before the steps it times)."""
    return {"method": method, "output_dir": out, "model.pipeline": pipeline, "reward": cfg.reward,
            "sample_grid_every": 0, "curve_every": 0, "prompts.eval_prompts": ("one red circle",),
            "dpok.rounds": cfg.rounds, "dpok.checkpoint_every_rounds": 0,
            "rwl.steps": cfg.rwl_steps, "rwl.samples_per_prompt": 1, "rwl.pretrain_per_prompt": 1,
            "rwl.checkpoint_every_steps": 0,
            **({"region.weight": cfg.region_weight} if cfg.region_weight > 0 else {})}


def shapes_config(cfg: BenchConfig, pipeline: str, out: str, method: Method, flow: bool = False) -> FinetuneConfig:
    """The shapes-world configuration: ``method``'s shipped config as ``make demo`` loads it
    (finetune/configs/<method>.yaml), the bench's overrides on it, then ``cfg.shapes_args``;
    ``flow``: on shapes-flow, which samples with no T5 tokens (as workflows/configs/demo-flow.yaml)."""
    shipped = load_config(FinetuneConfig, CONFIGS / f"{method}.yaml")
    t5 = {"sampling.max_sequence_length": FLOW_SAMPLING.max_sequence_length} if flow else {}
    values = {**bench_overrides(cfg, pipeline, out, method), **t5}
    return with_overrides(replace_keys(shipped, values), cfg.shapes_args)


def gpu_config(cfg: BenchConfig, pipeline: str, out: str, method: Method, prompts_file: str) -> FinetuneConfig:
    """The CUDA configuration: ``cfg.gpu_config`` as a user runs it, the bench's overrides on it,
    then ``cfg.gpu_args``.  ``prompts_file`` (:func:`write_bench_prompts`) holds one DPOK round's
    worth of prompts, so that RWL's D_model, one sample each, is sampled at the same batch shape as
    a DPOK round (its one-off sampling is not what the bench times)."""
    shipped = load_config(FinetuneConfig, Path(cfg.gpu_config))
    values = {**bench_overrides(cfg, pipeline, out, method), "prompts.prompts_file": prompts_file}
    return with_overrides(replace_keys(shipped, values), cfg.gpu_args)


def write_bench_prompts(cfg: BenchConfig, path: Path) -> str:
    """One DPOK round's worth of shapes-world train prompts of the CUDA configuration, one per line."""
    d = gpu_config(cfg, "", "", "dpok", str(path)).dpok
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
    flop_convention: str | None = None  # FLOP_CONVENTION where an MFU is given
    gpu: str | None = None
    levers: dict | None = None  # lever_timings: seconds eager ("off") and compiled ("on")
    compute: dict | None = None  # the run's compute settings (compile, micro_batch, gradient_checkpointing)
    pass_peak_mb: dict | None = None  # peak CUDA memory of each bare pass, the models included
    # BenchConfig.adapters: {parameterisation: {"update": s, "sample": s}} per DPOK round (median, warm)
    adapter_s: dict | None = None
    date: str | None = None  # UTC day of the run


def _reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _settings(cfg: FinetuneConfig) -> str:
    """What a record's notes add when set: the region-aware objective, and inductor's max-autotune
    (``TORCHINDUCTOR_MAX_AUTOTUNE=1``, scripts/gpu-session.sh's ``AUTOTUNE=1``)."""
    import torch._inductor.config as inductor

    return ((f", region.weight {cfg.region.weight:g}" if cfg.region.weight > 0 else "")
            + (", inductor max-autotune" if inductor.max_autotune else ""))


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
        w0, w1 = dpok_cfg.dpok_window
        loop_device = "cuda" if torch.cuda.is_available() else "cpu"  # the accelerator's default
        _reset_peak_memory(loop_device)
        train_dpok(dpok_cfg, progress=False, on_round=lambda r: rows.append(r))
        peak_mb = peak_memory_mb(loop_device)
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
        outside = [r.outside_change for r in rows if r.outside_change is not None]
        results.append(BenchResult(
            name=name, method="dpok", device=device, overhead_ratio=measured / bare_total, measured_s=measured,
            bare_s=bare_total, split_s={"sample": sample, "reward": reward_t, "update": update,
                                        "bare_sample": bare["sample_s"], "bare_reward": bare["reward_s"],
                                        "bare_update": bare["update_s"],
                                        "first_round": first.seconds_sample + first.seconds_reward + first.seconds_update},
            images_per_s=b / sample, transitions_per_s=b * d.steps_per_sample / update,
            peak_memory_mb=peak_mb, mfu_update=mfu, mfu_bare_update=mfu_bare,
            update_tflops_per_minibatch=flops_mb / 1e12 if flops_mb else None, gpu=gpu, compute=compute,
            flop_convention=FLOP_CONVENTION if mfu is not None else None,
            pass_peak_mb=bare.get("peak_mb"), date=day,
            notes=f"B={b} samples, T={dpok_cfg.sampling.num_inference_steps} steps, {d.steps_per_sample} trained per "
                  f"sample from steps [{w0}, {w1})" + (f" then a {d.tail_steps}-call tail" if d.tail_steps else "")
                  + f", minibatch {d.minibatch_size}, CFG" + _settings(dpok_cfg)
                  + (f" (mean outside change {statistics.mean(outside):.3g})" if outside else "")))
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
            peak_memory_mb=peak_memory_mb(device), gpu=gpu, compute=compute, date=day,
            notes=f"batch {rwl_cfg.rwl.batch_size} (half D_model, half D_pre)" + _settings(rwl_cfg)))
        on_result(results)
        if levers:
            results[0].levers = lever_timings(run, dpok_cfg, cfg.repeats)
            on_result(results)
        if cfg.adapters:
            results[0].adapter_s = adapter_timings(make_cfg(f"{tmp}/adapters", "dpok"), cfg.adapters)
            on_result(results)
    return results


def adapter_timings(dpok_cfg: FinetuneConfig, adapters: tuple[Parameterisation, ...]) -> dict:
    """Seconds per DPOK round of the update and of the sampling (medians past the first round) with
    each trainable part in ``adapters``, the rest of ``dpok_cfg`` alike, one after the other here."""
    out = {}
    for kind in adapters:
        rows: list = []
        cfg = replace(dpok_cfg, output_dir=f"{dpok_cfg.output_dir}-{kind}",
                      model=replace(dpok_cfg.model, parameterisation=kind))
        train_dpok(cfg, progress=False, on_round=rows.append)
        warm = rows[1:] or rows
        out[kind] = {"update": statistics.median(r.seconds_update for r in warm),
                     "sample": statistics.median(r.seconds_sample for r in warm)}
    return out


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
                         f"{100 * r.mfu_bare_update:.1f} % of the bare passes; FLOPs: {r.flop_convention}")
        if r.pass_peak_mb:
            lines.append(f"- {r.name}/{r.method} peak MB of each bare pass: "
                         f"{json.dumps({k: round(v) for k, v in r.pass_peak_mb.items()})}")
        if r.adapter_s:
            lora = r.adapter_s.get("lora", {}).get("update")
            lines.append(f"- {r.name}/{r.method} seconds per round by trainable part (update, sampling): " + "; ".join(
                f"{k} {t['update']:.3f}, {t['sample']:.3f}" + (f" (update {lora / t['update']:.1f}x cheaper than lora)"
                                                             if lora and k != "lora" else "")
                for k, t in r.adapter_s.items()))
        if r.levers:
            lines.append(f"- {r.name}/{r.method} bare passes, seconds eager and compiled: "
                         f"{json.dumps({k: {p: round(v, 4) for p, v in t.items()} for k, t in r.levers.items()})}")
    by = {(r.name, r.method): r for r in results}
    sd, flow = by.get(("shapes", "dpok")), by.get(("shapes-flow", "dpok"))
    if sd and flow:
        lines.append(f"- shapes-flow against shapes (DPOK, same configs, this run): sampling "
                     f"{sd.images_per_s / flow.images_per_s:.2f}x the seconds per image, a round "
                     f"{flow.measured_s / sd.measured_s:.2f}x the seconds")
    lines += [f"- skipped: {s}" for s in skipped]
    (out / "bench.md").write_text("\n".join(lines) + "\n")


def _with_reward(cfg: BenchConfig, clip, tmp: Path) -> BenchConfig:
    """``cfg`` with a reward model to time: the one named, or an untrained head on ``clip()``."""
    if cfg.reward.kind == "oracle" or cfg.reward.path:
        return cfg
    path = build_reward_model(clip(), tmp / "reward", region=cfg.region_weight > 0)
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, path=str(path)))


def run_bench(cfg: BenchConfig) -> int:
    """``make bench`` with ``cfg``: every configuration, bench.json and bench.md after each result."""
    if cfg.demo:
        check_runs(cfg.demo_runs)  # before minutes of other benchmarks
    # a bad shapes_args, gpu_config or gpu_args is refused before minutes of timing, too
    flow = cfg.flow and cfg.region_weight == 0
    for method in ("dpok", "rwl"):
        if cfg.shapes:
            shapes_config(cfg, cfg.cpu_pipeline, "", method)
        if flow:
            shapes_config(cfg, cfg.flow_pipeline, "", method, flow=True)
        if cfg.gpu:
            gpu_config(cfg, "", "", method, "")
    skipped, results = [], []
    out = Path(cfg.output_dir)

    def save(done: list) -> None:  # after every result: a run cut short keeps what it measured
        write_report(results + done, out, skipped)

    if cfg.shapes:
        print("bench: shapes world", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            shapes_cfg = _with_reward(cfg, lambda: SHAPES_CLIP, Path(tmp))
            results += bench_pipeline(shapes_cfg, "shapes",
                                      lambda o, m: shapes_config(shapes_cfg, cfg.cpu_pipeline, o, m),
                                      levers=cfg.cpu_levers, on_result=save)
    if flow:
        print("bench: shapes world, the flow-matching model (shapes-flow)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            flow_cfg = _with_reward(dataclasses.replace(cfg, adapters=()), lambda: SHAPES_CLIP, Path(tmp))
            results += bench_pipeline(flow_cfg, "shapes-flow",
                                      lambda o, m: shapes_config(flow_cfg, cfg.flow_pipeline, o, m, flow=True),
                                      on_result=save)
    elif cfg.flow:
        skipped.append("shapes-flow (region_weight: region-aware fine-tuning is not built for a flow model)")
    if cfg.gpu and torch.cuda.is_available():
        print(f"bench: SD v1.5 architecture, 512x512, {cfg.gpu_config} on CUDA", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            sd = build_random_sd15(Path(tmp) / "sd15")
            gcfg = _with_reward(cfg, lambda: build_random_clip_vitl14(Path(tmp) / "clip"), Path(tmp))
            prompts = write_bench_prompts(cfg, Path(tmp) / "prompts.txt")
            results += bench_pipeline(gcfg, "sd15-512-cuda", lambda o, m: gpu_config(gcfg, str(sd), o, m, prompts),
                                      levers=cfg.gpu_levers, on_result=save)
    else:
        skipped.append("sd15-512-cuda (no CUDA device)")
    write_report(results, out, skipped)
    if cfg.demo:
        print("bench: make demo, eager and compiled", file=sys.stderr)
        bench_demo(cfg.demo_args, out, cfg.demo_runs)
        print((out / "demo.md").read_text())
    for r in results:
        print(f"{r.name}/{r.method}: overhead_ratio={r.overhead_ratio:.3f} measured={r.measured_s:.3f}s "
              f"bare={r.bare_s:.3f}s")
    print(f"wrote {cfg.output_dir}/bench.json and bench.md")
    return 0

