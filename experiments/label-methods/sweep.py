"""One run of the DPO / KTO settings sweep (issue 75): ``make finetune METHOD=dpo|kto`` on the SD
demo's round (its labels in datasets/demo, its 32 targets in runs/demo/targets.txt), then its gain on
256 fresh seeds (8 per target, not the demo evaluation's seeds), judged by the shapes oracle, paired
with the base model on the same prompt and seed; written as a record beside this file.

    make demo                                                              # datasets/demo, runs/demo (seed 0)
    .venv/bin/python experiments/label-methods/sweep.py LABEL METHOD [key=value ...]  # e.g. dpo-b2500 dpo dpo.beta=2500
    .venv/bin/python experiments/label-methods/sweep.py demo-dpok -              # a finished run: runs/demo/finetune-dpok

Record: finetune-<UTC day>-<LABEL>-seed<seed>.json (the run's metrics.json without its per-step
history, the fresh-seed gain and the command)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.images import pil_to_tensor
from core.loading import load_model, load_sd_pipeline, resolve_model
from core.sampling import SamplingConfig, generate_images
from data.targets import read_prompts_file
from pipelines.finetune import main as finetune
from reward.reward_fn import RewardSource, load_reward
from tools.records import machine

HERE = Path(__file__).resolve().parent
ROOT, TARGETS, BASE_MODEL = "datasets/demo", "runs/demo/targets.txt", "shapes/models/shapes-sd"
PER_PROMPT = 8
FINISHED = {"demo-dpok": "runs/demo/finetune-dpok", "demo-rwl": "runs/demo/finetune-rwl"}


def aligned(model: str, texts: list[str], seeds: list[int], judge) -> np.ndarray:
    """(N,) 1 where the oracle passes ``model``'s image of texts[i] from seeds[i] (the evaluation's sampler)."""
    pipe = load_sd_pipeline(model, device="cpu") if model == BASE_MODEL else load_model(resolve_model(model), device="cpu")
    out = []
    for i in range(0, len(texts), 32):
        images = generate_images(pipe, texts[i:i + 32], seeds[i:i + 32], SamplingConfig())
        out.append(judge.score(pil_to_tensor(images), texts[i:i + 32]).numpy() == 1)
    return np.concatenate(out).astype(float)


def fresh_seed_gain(run: str) -> dict:
    texts = [p for p in read_prompts_file(TARGETS) for _ in range(PER_PROMPT)]
    seeds = [10**9 + i for i in range(len(texts))]
    judge = load_reward(RewardSource(kind="oracle", oracle="aligned"), "cpu")
    cache = Path("runs/label-sweep/base-aligned.npy")  # the base's images do not change between runs
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, aligned(BASE_MODEL, texts, seeds, judge))
    a, b = np.load(cache), aligned(run, texts, seeds, judge)
    d = b - a
    return {"images": len(texts), "base": 100 * a.mean(), "tuned": 100 * b.mean(), "gain": 100 * d.mean(),
            "gain_se": 100 * d.std(ddof=1) / np.sqrt(len(d))}


def sweep(label: str, method: str, overrides: list[str]) -> Path:
    torch.set_num_threads(2)
    run = FINISHED.get(label, f"runs/label-sweep/{label}")
    if method != "-":
        args = [f"method={method}", f"data.root={ROOT}", f"prompts.prompts_file={TARGETS}", "seed=0",
                f"output_dir={run}", *overrides]
        if not Path(run, "metrics.json").is_file() and finetune(args) != 0:  # a finished run is not trained again
            raise SystemExit(f"{label}: make finetune failed")
    metrics = json.loads(Path(run, "metrics.json").read_text())
    record = {k: v for k, v in metrics.items() if k not in ("history", "lineage", "curve")}
    record["label"], record["run"] = label, run
    record["fresh_seeds"] = fresh_seed_gain(run)
    record["device"] = machine()
    record["command"] = " ".join(["make demo;", ".venv/bin/python experiments/label-methods/sweep.py", label, method,
                                  *overrides])
    seed = next((a.split("=", 1)[1] for a in reversed(overrides) if a.startswith("seed=")), "0")
    out = HERE / f"finetune-{time.strftime('%Y-%m-%d', time.gmtime())}-{label}-seed{seed}.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({"label": label, **record["fresh_seeds"]}))
    return out


if __name__ == "__main__":
    sweep(sys.argv[1], sys.argv[2], sys.argv[3:])
