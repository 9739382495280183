"""One run of the flow-DPOK settings sweep (issue 73): DPOK on shapes-flow with the oracle as reward on
the flow demo's targets, its oracle learning curve every 10 rounds (64 images at fixed noise: one SE is
about 6 points) and, at the end, the gain on 256 fresh seeds sampled by the ODE the evaluation uses
and by the SDE DPOK trains on (sampler_gap.py), written as a record beside this file.

    make demo ARGS="--config workflows/configs/demo-flow.yaml"        # the targets: runs/demo-flow/targets.txt
    .venv/bin/python experiments/flow-dpok/sweep.py LABEL [key=value ...]   # e.g. noise0.3 dpok.noise_level=0.3

Record: finetune-<UTC day>-<LABEL>-seed<seed>.json (the run's metrics.json without its per-round
history, and the command)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipelines.finetune import main
from sampler_gap import main as sampler_gap
from tools.records import machine

HERE = Path(__file__).resolve().parent
BASE = ["method=dpok", "model.pipeline=shapes/models/shapes-flow", "sampling.max_sequence_length=0",
        "reward.kind=oracle", "prompts.prompts_file=runs/demo-flow/targets.txt", "curve_every=10", "seed=0"]


def sweep(label: str, overrides: list[str]) -> Path:
    args = BASE + [f"output_dir=runs/flow-sweep/{label}"] + overrides
    seed = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("seed=")), "0")
    done = Path(f"runs/flow-sweep/{label}/metrics.json")  # a finished run (its record failed): not trained again
    if not done.is_file() and main(args) != 0:
        raise SystemExit(f"{label}: make finetune failed")
    metrics = json.loads(done.read_text())
    record = {k: v for k, v in metrics.items() if k not in ("history", "lineage")}
    record["fresh_seeds"] = sampler_gap(f"runs/flow-sweep/{label}", 8)
    record["device"] = machine()
    # what ran, as it ran (BASE's keys, then the overrides: a later key wins)
    record["command"] = ('make demo ARGS="--config workflows/configs/demo-flow.yaml"; '
                         + " ".join([".venv/bin/python experiments/flow-dpok/sweep.py", label, *overrides]))
    out = HERE / f"finetune-{time.strftime('%Y-%m-%d', time.gmtime())}-{label}-seed{seed}.json"
    out.write_text(json.dumps(record, indent=1))
    return out


if __name__ == "__main__":
    print(sweep(sys.argv[1], sys.argv[2:]))
