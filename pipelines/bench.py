"""``make bench``: throughput and overhead of the DPOK and RWL loops -> reports/bench/.

Configurations: the shapes world (the committed model; an untrained reward head on the shapes
CLIP; ``shapes=false`` skips it), and, when CUDA is available, SD v1.5's architecture with random
weights under ``gpu_config`` (finetune/configs/sd15.yaml: 512x512, bf16, LoRA, its compile and
micro-batch settings) with a reward head on a random CLIP ViT-L/14.  ``reward.path=<folder>``
times that reward model instead; ``reward.kind=oracle`` the shapes-world oracle.  ``demo=true``
also times ``make demo`` stage by stage, eager and compiled (:mod:`tools.demo_bench`);
``shapes=false gpu=false demo=true`` that alone.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from tools.bench import BenchConfig, bench_pipeline, gpu_config, shapes_config, write_bench_prompts, write_report
from tools.random_models import build_random_clip_vitl14, build_random_sd15, build_reward_model
from tools.demo_bench import bench_demo, check_runs
from pipelines.cli import config_parser, parse_config, run
from shapes import SHAPES_CLIP


def _with_reward(cfg: BenchConfig, clip, tmp: Path) -> BenchConfig:
    """``cfg`` with a reward model to time: the one named, or an untrained head on ``clip()``."""
    if cfg.reward.kind == "oracle" or cfg.reward.path:
        return cfg
    path = build_reward_model(clip(), tmp / "reward")
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, path=str(path)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BenchConfig, config_parser(__doc__.splitlines()[0]), argv)
    if cfg.demo:
        check_runs(cfg.demo_runs)  # before minutes of other benchmarks
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


if __name__ == "__main__":
    sys.exit(run(main))
