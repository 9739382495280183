"""``make bench``: throughput and overhead of the DPOK and RWL loops -> reports/bench/.

Configurations: the shapes world on CPU (the committed model; an untrained reward head on the
shapes CLIP), and, when CUDA is available, SD v1.5's architecture with random weights at 512x512 in
bf16 with LoRA and a reward head on a random CLIP ViT-L/14.  ``reward.path=<folder>`` times that
reward model instead; ``reward.kind=oracle`` the shapes-world oracle.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from finetune.bench import (BenchConfig, bench_pipeline, build_random_clip_vitl14, build_random_sd15,
                            build_reward_model, gpu_config, write_report)
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
    skipped = []
    print("bench: shapes world on CPU", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        cpu_cfg = _with_reward(cfg, lambda: SHAPES_CLIP, Path(tmp))
        results = bench_pipeline(cpu_cfg, "shapes-cpu", cfg.cpu_pipeline, mixed_precision="no",
                                 levers=cfg.cpu_levers)
    if cfg.gpu and torch.cuda.is_available():
        print("bench: SD v1.5 architecture, 512x512, bf16, LoRA on CUDA", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            sd = build_random_sd15(Path(tmp) / "sd15")
            gpu_cfg = gpu_config(_with_reward(cfg, lambda: build_random_clip_vitl14(Path(tmp) / "clip"), Path(tmp)))
            results += bench_pipeline(gpu_cfg, "sd15-512-cuda", str(sd), mixed_precision="bf16",
                                      levers=cfg.gpu_levers)
    else:
        skipped.append("sd15-512-cuda (no CUDA device)")
    write_report(results, Path(cfg.output_dir), skipped)
    for r in results:
        print(f"{r.name}/{r.method}: overhead_ratio={r.overhead_ratio:.3f} measured={r.measured_s:.3f}s "
              f"bare={r.bare_s:.3f}s")
    print(f"wrote {cfg.output_dir}/bench.json and bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
