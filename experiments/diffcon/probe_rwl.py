"""Issue 76 item 1: does RWL, a supervised regression, teach a side network what it teaches LoRA?

The shipped RWL (rwl.yaml) on the shapes-world training prompts with the oracle as reward (so no
demo is needed), D_model and D_pre at ``PER_PROMPT`` images a prompt, ``rwl.steps`` steps; then
the oracle-aligned share of the trained model's images of every training prompt from fixed noise
(2 seeds a prompt, DPOK's learning-curve images, the base's from the same noise), and the
training loss of the last 50 steps.  Then memorising against learning: the change of the weighted
D_model loss from the base model's to the trained model's (the same noise and timesteps, 4 draws an
image) on the D_model the run trained on and on a held-out one, the same prompts sampled by the
base model from fresh seeds and weighted by the same rule (``train_dloss``, ``held_dloss``; < 0:
the trained model fits those images better than the base), and the unweighted change on each set's
images of weight 0 (``*_w0``: the images the reward did not ask it to fit).

Usage (repository root): python experiments/diffcon/probe_rwl.py TAG KIND [key=value ...]
(KIND lora or side).  Writes one record, experiments/diffcon/diag-<date>-side-rwl-TAG-KIND.json
(tools/records.py packs it into records.jsonl), and prints it.
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


def chain(pipe, cfg: FinetuneConfig):
    """The run's sampling chain on ``pipe`` (DDIM at cfg.sampling) and its latent shape (C, h, w)."""
    from finetune.policy import DiffusionPolicy
    from finetune.scheduler import DDIMSchedule

    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, cfg.sampling.num_inference_steps, cfg.sampling.eta)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    return DiffusionPolicy(pipe.unet, schedule, cfg.sampling.guidance_scale), shape


def aligned(pipe, cfg: FinetuneConfig, prompts: list[str]) -> float:
    from finetune.dpok import CURVE_JUDGE, curve_alignment
    from finetune.sampler import encode_prompts
    from reward.reward_fn import load_reward

    texts = [p for p in prompts for _ in range(cfg.curve_samples)]
    cond, uncond = encode_prompts(pipe, texts, "cpu")
    policy, shape = chain(pipe, cfg)
    return curve_alignment(policy, pipe, load_reward(CURVE_JUDGE, "cpu"), texts, cond, uncond, shape, cfg)


DRAWS = 4  # noise and timestep draws an image in the held-out loss probe
HELD_SEED = 7_000  # the held-out D_model's seed offset (DPOK's curve and RWL's D_model use others)


@torch.no_grad()
def held_out_model_set(pipe, cfg: FinetuneConfig, prompts: list[str]) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """D_model again from fresh seeds: the base's latents (N, C, h, w) of ``PER_PROMPT`` images a
    prompt, their prompts and their weights (rwl.weighting of the oracle's rewards)."""
    from finetune.dpok import CURVE_JUDGE
    from finetune.rl_math import reward_weights
    from finetune.sampler import decode_latents, encode_prompts, sample_trajectories
    from reward.reward_fn import load_reward

    texts = [p for p in prompts for _ in range(PER_PROMPT)]
    policy, shape = chain(pipe, cfg)
    judge, gen = load_reward(CURVE_JUDGE, "cpu"), torch.Generator("cpu").manual_seed(cfg.seed + HELD_SEED)
    latents, rewards = [], []
    for i in range(0, len(texts), 32):
        chunk = texts[i:i + 32]
        cond, uncond = encode_prompts(pipe, chunk, "cpu")
        final = sample_trajectories(policy, cond, uncond, shape, gen, chunk).final_latents
        latents.append(final)
        rewards.append(judge.score(decode_latents(pipe.vae, final), chunk).float())
    r = cfg.rwl
    return torch.cat(latents), texts, reward_weights(torch.cat(rewards), r.weighting, r.temperature, r.threshold)


@torch.no_grad()
def weighted_loss_change(base, tuned, cfg: FinetuneConfig, latents: torch.Tensor, texts: list[str],
                         weights: torch.Tensor) -> tuple[float, float]:
    """sum w (l_tuned - l_base) / sum w over ``DRAWS`` draws of noise and timestep an image: the
    guided denoising loss RWL minimises (rwl.guided_loss), tuned pipeline's against the base's; and
    the unweighted mean change on the images of weight 0 (those RWL is not told to fit: a change
    there as large as on the weighted ones is a fit of the base's samples, not of the reward)."""
    from types import SimpleNamespace

    from finetune.objective import DenoisingObjective
    from finetune.sampler import encode_prompts

    objective, run = DenoisingObjective(base.scheduler), SimpleNamespace(device="cpu")
    guidance = cfg.sampling.guidance_scale if cfg.rwl.guided_loss else 1.0
    gen = torch.Generator("cpu").manual_seed(cfg.seed + HELD_SEED + 1)
    starts = range(0, len(texts), 32)
    text = {i: [encode_prompts(pipe, texts[i:i + 32], "cpu") for pipe in (base, tuned)] for i in starts}
    num, den, zero, n_zero = 0.0, 0.0, 0.0, 0
    for _ in range(DRAWS):
        for i in starts:
            x0, w = latents[i:i + 32], weights[i:i + 32]
            noise, t = objective.draw(len(x0), tuple(x0.shape[1:]), gen, "cpu")
            losses = []
            for pipe, (cond, uncond) in zip((base, tuned), text[i]):
                pred, target = objective.predict(run, pipe.unet, x0, cond, uncond, noise, t, guidance)
                losses.append(((pred - target) ** 2).flatten(1).mean(1))
            change = losses[1] - losses[0]
            num += float((w * change).sum())
            den += float(w.sum())
            zero += float(change[w == 0].sum())
            n_zero += int((w == 0).sum())
    return num / den, (zero / n_zero if n_zero else float("nan"))


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
        base_pipe = load_model(resolve_model(cfg.model.pipeline), device="cpu")
        tuned_pipe = load_model(resolve_model(result.output_dir), device="cpu")
        base, tuned = aligned(base_pipe, cfg, prompts), aligned(tuned_pipe, cfg, prompts)
        trained = torch.load(Path(result.output_dir) / "rwl_data.pt", weights_only=False)["model"]
        train_dloss, train_dloss0 = weighted_loss_change(base_pipe, tuned_pipe, cfg, trained["latents"],
                                                         trained["prompts"], trained["weights"])
        held_dloss, held_dloss0 = weighted_loss_change(base_pipe, tuned_pipe, cfg,
                                                       *held_out_model_set(base_pipe, cfg, prompts))
    losses = [h["loss_model"] for h in result.history]
    rec = {"tag": tag, "kind": kind, "overrides": overrides, "prompts": len(prompts), "base_aligned": base,
           "tuned_aligned": tuned, "gain": tuned - base, "loss_model_first50": float(np.mean(losses[:50])),
           "loss_model_last50": float(np.mean(losses[-50:])), "train_dloss": train_dloss,
           "held_dloss": held_dloss, "train_dloss_w0": train_dloss0, "held_dloss_w0": held_dloss0, "train_s": train_s,
           "command": f"PYTHONPATH=. python experiments/diffcon/probe_rwl.py {' '.join(sys.argv[1:])}"}
    (ROOT / f"diag-{time.strftime('%Y-%m-%d')}-side-rwl-{tag}-{kind}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
