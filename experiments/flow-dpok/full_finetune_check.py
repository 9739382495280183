"""Does shapes-flow learn its targets from their true renders when fine-tuned as it was trained (every
transformer parameter, AdamW, the conditional flow-matching loss with 10 % empty prompts, SD3's
logit-normal noise levels at timestep sigma * 1000; shapes/training/flow.py), and through a LoRA
with the same data, loss and optimiser (ADAPTER: full, or lora<rank>: make finetune's adapter on the
family's targets, alpha = rank)?  The fresh-seed check of sampler_gap.py then compares base and
tuned models on the targets.

    make demo ARGS="--config workflows/configs/demo-flow.yaml"        # the targets
    .venv/bin/python experiments/flow-dpok/target_renders.py runs/flow-sweep/target-renders 16
    .venv/bin/python experiments/flow-dpok/full_finetune_check.py LABEL STEPS LR ADAPTER [RENDERS] [PIPELINE] [TARGETS] [SEED]

Record: finetune-<UTC day>-<LABEL>-seed<SEED>.json beside this file."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import load_config
from core.families import pipeline_family
from core.images import pil_to_tensor
from core.loading import load_sd_pipeline
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from finetune.denoiser import encode_images, encode_prompts
from finetune.flow_rwl import FlowMatchingObjective
from finetune.rl_math import flow_noised, flow_velocity_target
from reward.reward_fn import RewardSource, load_reward
from sampler_gap import aligned
from tools.records import machine

HERE = Path(__file__).resolve().parent


def main(label: str, steps: int, lr: float, adapter: str = "full", renders: str = "runs/flow-sweep/target-renders",
         pipeline: str = "shapes/models/shapes-flow", targets: str = "runs/demo-flow/targets.txt", seed: int = 0
         ) -> Path:
    torch.set_num_threads(2)
    overrides = [f"model.pipeline={pipeline}", f"prompts.prompts_file={targets}", f"seed={seed}"]
    if "flow" in pipeline:
        overrides.append("sampling.max_sequence_length=0")
    cfg = load_config(FinetuneConfig, None, overrides)
    base = load_sd_pipeline(pipeline, device="cpu")
    tuned = copy.deepcopy(base)
    rows = [json.loads(line) for line in (Path(renders) / "metadata.jsonl").read_text().splitlines()]
    images = pil_to_tensor([Image.open(Path(renders) / r["file_name"]).convert("RGB") for r in rows])
    prompts = [r["prompt"] for r in rows]
    latents = encode_images(tuned.vae, images)
    objective = FlowMatchingObjective(tuned.scheduler)
    model = tuned.transformer.train().requires_grad_(adapter == "full")
    if adapter != "full":
        from peft import LoraConfig

        rank = int(adapter.removeprefix("lora"))
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=list(pipeline_family(tuned).lora_targets)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)  # batches, empty prompts, noise and levels
    t0, losses = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(prompts), (32,), generator=gen)
        texts = ["" if torch.rand((), generator=gen) < 0.1 else prompts[i] for i in idx.tolist()]  # CFG dropout
        with torch.no_grad():
            cond, _ = encode_prompts(tuned, texts, "cpu", cfg.sampling.max_sequence_length)
        noise, sigma = objective.draw(32, tuple(latents.shape[1:]), gen, "cpu")
        x0 = latents[idx]
        x_t = flow_noised(x0, noise, sigma)
        pred = model(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=cond.embeds,
                     pooled_projections=cond.pooled, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, flow_velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval().requires_grad_(False)
    judge = load_reward(RewardSource(kind="oracle", oracle="aligned"), "cpu")
    texts = [p for p in read_prompts_file(targets) for _ in range(8)]
    seeds = [10**9 + i for i in range(len(texts))]  # sampler_gap.py's
    fresh: dict = {"images": len(texts), "noise_level": cfg.dpok.noise_level}
    for sampler in ("sde", "ode"):
        a, b = aligned(base, cfg, texts, seeds, sampler, judge), aligned(tuned, cfg, texts, seeds, sampler, judge)
        d = b - a
        fresh[sampler] = {"base": 100 * a.mean(), "tuned": 100 * b.mean(), "gain": 100 * d.mean(),
                          "gain_se": 100 * d.std(ddof=1) / np.sqrt(len(d))}
    record = {"method": f"{adapter} fine-tune on true renders (study)", "steps": steps, "lr": lr,
              "seconds": time.time() - t0,
              "loss": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, steps, 50)],
              "fresh_seeds": fresh, "device": machine(),
              "command": " ".join([".venv/bin/python experiments/flow-dpok/full_finetune_check.py", label, str(steps),
                                   str(lr), adapter, renders, pipeline, targets, str(seed)])}
    out = HERE / f"finetune-{time.strftime('%Y-%m-%d', time.gmtime())}-{label}-seed{seed}.json"
    out.write_text(json.dumps(record, indent=1))
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    print(main(a[0], int(a[1]), float(a[2]), *a[3:7], *map(int, a[7:8])))
