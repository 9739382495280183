"""Issue 76 item 1: does RWL, a supervised regression, teach a side network what it teaches LoRA?

The shipped RWL (rwl.yaml) on the shapes-world training prompts with the oracle as reward (so no
demo is needed), D_model and D_pre at ``PER_PROMPT`` images a prompt, ``rwl.steps`` steps; then
the oracle-aligned share of the trained model's images of every training prompt from fixed noise
(2 seeds a prompt, DPOK's learning-curve images, the base's from the same noise), and the
training loss of the last 50 steps.

Usage (repository root): python experiments/diffcon/probe_rwl.py TAG KIND [key=value ...]
(KIND lora or side).  Writes one record, experiments/diffcon/diag-<date>-side-rwl-TAG-KIND.json (tools/records.py packs it into records.jsonl), and prints it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from finetune.config import CONFIGS, FinetuneConfig

ROOT = Path(__file__).resolve().parent
PER_PROMPT = 2


def aligned(pipe, cfg: FinetuneConfig, prompts: list[str]) -> float:
    from finetune.dpok import CURVE_JUDGE, curve_alignment
    from finetune.policy import DiffusionPolicy
    from finetune.scheduler import DDIMSchedule
    from finetune.sampler import encode_prompts
    from reward.reward_fn import load_reward

    texts = [p for p in prompts for _ in range(cfg.curve_samples)]
    cond, uncond = encode_prompts(pipe, texts, "cpu")
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, cfg.sampling.num_inference_steps, cfg.sampling.eta)
    policy = DiffusionPolicy(pipe.unet, schedule, cfg.sampling.guidance_scale)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    return curve_alignment(policy, pipe, load_reward(CURVE_JUDGE, "cpu"), texts, cond, uncond, shape, cfg)


def share_guidance_correction() -> None:
    """Variant: under classifier-free guidance (rows [uncond; cond], told apart here by the first
    half's rows being one and the same text, the empty prompt's) g_phi runs on the conditional rows
    only and its output is added to both halves, so the guided output moves by lambda * g_c and
    g_phi cannot change the guidance gap c - u (which guidance multiplies by w)."""
    from core.side import SideOutput, SideUNet

    plain = SideUNet.forward

    def forward(self, sample, timestep, encoder_hidden_states, *args, eps_pre=None, return_dict=True, **kwargs):
        n = sample.shape[0]
        e = encoder_hidden_states
        paired = n % 2 == 0 and n > 1 and bool((e[: n // 2] == e[:1]).all()) and not torch.equal(e[0], e[n // 2])
        if not paired:
            return plain(self, sample, timestep, encoder_hidden_states, *args, eps_pre=eps_pre,
                         return_dict=return_dict, **kwargs)
        if eps_pre is None:
            with torch.no_grad():
                eps_pre = self.base(sample, timestep, e, *args, return_dict=False, **kwargs)[0]
        h = n // 2
        t = timestep if torch.as_tensor(timestep).dim() == 0 else timestep[h:]
        dtype = self.side.conv_in.weight.dtype
        g = self.side(torch.cat([sample[h:], eps_pre[h:].to(sample.dtype)], 1).to(dtype), t,
                      encoder_hidden_states=e[h:].to(dtype)).sample
        out = (eps_pre.float() + self.strength * torch.cat([g, g]).float()).to(sample.dtype)
        return SideOutput(out, eps_pre) if return_dict else (out,)

    SideUNet.forward = forward


def main() -> None:
    from core.loading import load_model, resolve_model
    from finetune.prompts import training_prompts
    from finetune.rwl import train_rwl

    tag, kind, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    if "shared" in overrides:
        overrides.remove("shared")
        share_guidance_correction()
        tag += "-shared"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(FinetuneConfig, CONFIGS / "rwl.yaml", [
            f"output_dir={tmp}/run", f"model.parameterisation={kind}", "reward.kind=oracle", "sample_grid_every=0",
            f"rwl.samples_per_prompt={PER_PROMPT}", f"rwl.pretrain_per_prompt={PER_PROMPT}",
            "rwl.checkpoint_every_steps=0", *overrides])
        t0 = time.perf_counter()
        result = train_rwl(cfg, progress=False)
        train_s = time.perf_counter() - t0
        prompts = training_prompts(cfg)
        base = aligned(load_model(resolve_model(cfg.model.pipeline), device="cpu"), cfg, prompts)
        tuned = aligned(load_model(resolve_model(result.output_dir), device="cpu"), cfg, prompts)
    losses = [h["loss_model"] for h in result.history]
    rec = {"tag": tag, "kind": kind, "overrides": overrides, "prompts": len(prompts), "base_aligned": base,
           "tuned_aligned": tuned, "gain": tuned - base, "loss_model_first50": float(np.mean(losses[:50])),
           "loss_model_last50": float(np.mean(losses[-50:])), "train_s": train_s,
           "command": f"PYTHONPATH=. python experiments/diffcon/probe_rwl.py {' '.join(sys.argv[1:])}"}
    (ROOT / f"diag-{time.strftime('%Y-%m-%d')}-side-rwl-{tag}-{kind}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
