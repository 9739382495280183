"""``make bench``: throughput and overhead of the DPOK and RWL loops -> reports/bench/.

Configurations: the shapes world (the committed model under the configs ``make demo`` runs,
finetune/configs/dpok.yaml and rwl.yaml; an untrained reward head on the shapes CLIP;
``shapes=false`` skips it), and, when CUDA is available, SD v1.5's architecture with random
weights under ``gpu_config`` (finetune/configs/sd15.yaml: 512x512, bf16, LoRA, its compile and
micro-batch settings) with a reward head on a random CLIP ViT-L/14.  Each is the shipped config
with only the bench's own keys on top (``rounds``, ``rwl_steps``, no checkpoints or grids), then
``shapes_args=[...]`` / ``gpu_args=[...]``: dotted fine-tuning overrides, e.g.
``gpu_args=[compute.micro_batch=16]``.  ``reward.path=<folder>``
times that reward model instead; ``reward.kind=oracle`` the shapes-world oracle.  ``demo=true``
also times ``make demo`` stage by stage, eager and compiled (:mod:`tools.demo_bench`);
``shapes=false gpu=false demo=true`` that alone.
"""

from __future__ import annotations

import sys

from pipelines.cli import config_parser, parse_config, run
from tools.bench import BenchConfig, run_bench


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_config(BenchConfig, config_parser(__doc__.splitlines()[0]), argv))


if __name__ == "__main__":
    sys.exit(run(main))
