"""``make reward-bench``: measure the reward stage's targets in the shapes world.

    python -m pipelines.reward_bench [per_prompt=8] [flip_rate=0.1] [reward.model.clip=...]

Renders a labelling round of every shapes prompt (train and held-out; ``mismatch_rate`` of the
images show a prompt one attribute away), has ``raters`` simulated raters label it with
``flip_rate`` label noise (binary labels and rankings, ``overlap`` raters per item), then trains
the reward model on it exactly as ``make reward`` does and prints the metrics table.  Validation is
on the held-out prompts (compositions no training prompt has).  Targets (checked here, see
reward_targets): pairwise accuracy against the oracle >= 0.85, above zero-shot CLIP's, and the
auxiliary loss helps.

A root that already holds generations is reused as it is (delete it for a fresh round).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field

from data.generations import load_image
from data.store import Store
from labeling_app.simulate import simulate_round
from reward.config import RewardConfig
from reward.summary import metrics_table
from reward.train import train_reward
from shapes.raters import default_panel
from shapes.render import render_round
from shapes.world import prompt_set


@dataclass(frozen=True)
class RewardBenchConfig:
    root: str = "datasets/reward-bench"
    per_prompt: int = 8
    mismatch_rate: float = 0.5
    flip_rate: float = 0.1
    raters: int = 5
    overlap: int = 2
    seed: int = 0
    speed_batch: int = 128
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(out_dir="runs/reward-bench"))


def score_speed(model, store, batch: int, repeats: int = 5) -> dict:
    """Median wall time of RewardModel.score on ``batch`` images given as a float tensor
    (B, 3, H, W) on the model's device (how the fine-tuning stage calls it), prompts cached."""
    import numpy as np
    import torch

    gens = store.to_pandas("generations").iloc[:batch]
    arr = np.stack([np.asarray(load_image(store.root, r)) for _, r in gens.iterrows()])
    x = torch.as_tensor(arr).permute(0, 3, 1, 2).float().div(255).to(model.device)
    prompts = gens["prompt"].tolist()
    model.score(x, prompts)  # warm-up; fills the text cache
    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.score(x, prompts)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    ms = 1000 * float(np.median(times))
    return {"device": str(model.device), "batch": len(prompts), "threads": torch.get_num_threads(),
            "ms_per_batch": round(ms, 2), "images_per_s": round(1000 * len(prompts) / ms, 1)}


def _at_least(v, threshold: float, strict: bool = False) -> bool:
    """``v >= threshold`` (``>`` if strict); False for a missing figure (None: NaN in metrics.json)."""
    return v is not None and (v > threshold if strict else v >= threshold)


def reward_targets(m: dict) -> dict[str, bool]:
    """The reward stage's acceptance checks on a run's metrics.json ``m``, on its primary view: in
    the shapes world, pairwise accuracy vs the oracle >= 0.85 and above zero-shot CLIP's; with the
    ablation, the auxiliary loss helps "measurably" (paired, same-seed gain positive and above twice
    its standard error)."""
    targets = {}
    primary = m["primary_view"]
    p = m[primary]
    if m["pairwise_reference"] == "oracle":
        targets[f"{primary}_pairwise_accuracy_vs_oracle>=0.85"] = _at_least(p["pairwise_accuracy_vs_oracle"], 0.85)
        if "margin_over_zero_shot_clip" in p:
            targets[f"{primary}_above_zero_shot_clip"] = _at_least(p["margin_over_zero_shot_clip"], 0.0, strict=True)
    ablation = m["aux_ablation"]
    if ablation is not None:
        d = ablation["paired_delta"]
        sem = d["sem"] if d["sem"] is not None else 0.0
        targets["aux_loss_helps"] = d["mean"] is not None and d["mean"] > 0 and d["mean"] > 2 * sem
    return targets


def reward_bench(cfg: RewardBenchConfig) -> int:
    """Run it with ``cfg``; the exit status (0: every check held)."""
    store = Store(cfg.root)
    if store.exists("generations"):
        print(f"reusing the labelled round in {cfg.root}", file=sys.stderr)
    else:
        rows = render_round(store, prompt_set("all"), per_prompt=cfg.per_prompt, seed=cfg.seed,
                            mismatch_rate=cfg.mismatch_rate)
        summary = simulate_round(store, default_panel(cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed),
                                 overlap=cfg.overlap, seed=cfg.seed)
        print(f"rendered {len(rows)} images into {cfg.root}; {summary.binary_labels} binary labels, "
              f"{summary.rankings} rankings at flip rate {cfg.flip_rate}", file=sys.stderr)
    rc = dataclasses.replace(cfg.reward, data=dataclasses.replace(cfg.reward.data, root=cfg.root))
    result = train_reward(rc)
    m = result.metrics
    print(metrics_table(m))
    print(f"\nscore(): {json.dumps(score_speed(result.model, store, cfg.speed_batch))}")
    targets = reward_targets(m)
    print(f"targets: {targets}\nwrote {result.out_dir}")
    return 0 if all(targets.values()) else 1

