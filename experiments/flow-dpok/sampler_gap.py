"""Does a DPOK run's gain hold on fresh seeds, and on which sampler?  The base model and the run's
LoRA (or whole fine-tuned pipeline) on the same target prompts and seeds, sampled two ways, both at the run's own settings (its
config.yaml): the chain DPOK trains and draws its learning curve on ("sde": a flow family's
Flow-SDE at ``dpok.noise_level``, SD's DDIM at ``sampling.eta``; every step stochastic) and the
deterministic one ("ode": the flow ODE the evaluation samples, SD's DDIM at eta 0); the shapes
oracle judges each image aligned or not.

    .venv/bin/python experiments/flow-dpok/sampler_gap.py RUN_DIR [SAMPLES_PER_PROMPT]
    # e.g. runs/demo-flow/finetune-dpok after make demo ARGS="--config workflows/configs/demo-flow.yaml";
    # the prompts: the run's own (prompts.prompts_file)

Prints one JSON line: aligned share per (model, sampler), the gains with their paired standard
errors (same prompt, same seed)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from core.families import pipeline_family
from core.images import pil_to_tensor
from core.loading import load_model, load_sd_pipeline, resolve_model
from core.sampling import generate_images, latent_shape, pipeline_image_size
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from finetune.denoiser import decode_latents, denoiser_for, encode_prompts, make_schedule
from finetune.policy import DiffusionPolicy
from finetune.sampler import sample_trajectories
from reward.reward_fn import RewardSource, load_reward


def aligned(pipe, cfg: FinetuneConfig, texts: list[str], seeds: list[int], sampler: str, judge) -> np.ndarray:
    """(N,) 1 where the oracle passes the image of texts[i] drawn from seeds[i]."""
    family = pipeline_family(pipe)
    if sampler == "ode":  # a flow pipeline samples its ODE whatever eta says
        batch = pil_to_tensor(generate_images(pipe, texts, seeds, replace(cfg.sampling, eta=0.0)))
    else:
        shape = latent_shape(pipe, *pipeline_image_size(pipe, cfg.sampling.height, cfg.sampling.width))
        schedule = make_schedule(pipe, cfg.sampling, cfg.dpok.noise_level, shape)
        policy = DiffusionPolicy(getattr(pipe, family.denoiser), schedule, cfg.sampling.guidance_scale,
                                 denoiser=denoiser_for(family))
        parts = []
        for i in range(0, len(texts), 32):
            cond, uncond = encode_prompts(pipe, texts[i:i + 32], "cpu", cfg.sampling.max_sequence_length)
            gen = torch.Generator().manual_seed(seeds[i])
            with torch.no_grad():
                traj = sample_trajectories(policy, cond, uncond, shape, gen, texts[i:i + 32])
                parts.append(decode_latents(pipe.vae, traj.final_latents))
        batch = torch.cat(parts)
    return (judge.score(batch, texts).numpy() == 1).astype(float)


def main(run_dir: str, per_prompt: int = 8) -> dict:
    torch.set_num_threads(2)
    cfg = load_config(FinetuneConfig, Path(run_dir) / "config.yaml")
    prompts = read_prompts_file(cfg.prompts.prompts_file)  # the prompts the run trained on (its targets)
    texts = [p for p in prompts for _ in range(per_prompt)]
    seeds = [10**9 + i for i in range(len(texts))]
    judge = load_reward(RewardSource(kind="oracle", oracle="aligned"), "cpu")
    base = load_sd_pipeline(cfg.model.pipeline, device="cpu")
    tuned = load_model(resolve_model(run_dir), device="cpu")  # its LoRA fused, or its whole pipeline (full)
    out: dict = {"run": run_dir, "images": len(texts), "noise_level": cfg.dpok.noise_level}
    for sampler in ("sde", "ode"):
        a, b = aligned(base, cfg, texts, seeds, sampler, judge), aligned(tuned, cfg, texts, seeds, sampler, judge)
        d = b - a
        out[sampler] = {"base": 100 * a.mean(), "dpok": 100 * b.mean(), "gain": 100 * d.mean(),
                        "gain_se": 100 * d.std(ddof=1) / np.sqrt(len(d))}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *map(int, sys.argv[2:]))))
