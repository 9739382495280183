"""Issue 76 item 1: does a side network's DPOK update learn something that holds on fresh samples?

A round's policy-gradient step is fitted on 32 samples; what it is worth is its effect on samples
it did not see.  Both parameterisations start as the base model exactly (g_phi's output layer and
LoRA's B are zero), so one held-out set serves both: ``HELD`` rounds sampled by the base from
their own seeds, scored by the oracle, with every transition of the trained window.  Then
``ROUNDS`` rounds of the shipped DPOK loop (dpok.yaml, the run's own _sample / _score / _update),
and after each the held-out surrogate

    S = mean over held-out transitions of A * (log p_new(x_{t-1} | x_t) - log p_base(x_{t-1} | x_t))

(the first-order change of the expected reward the update makes, in advantage units; > 0: the
step generalises), the held-out KL from the base, and the training rounds' mean reward.

Usage (repository root): python experiments/diffcon/probe_learning.py TAG KIND [key=value ...]
(KIND lora or side; the overrides go to the run, e.g. model.side_strength=0.1 optim.lr=3e-4).
Writes one record, experiments/diffcon/diag-<date>-side-learning-TAG-KIND.json (tools/records.py packs it into records.jsonl), and prints it.
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
HELD = 4  # held-out rounds (x 32 samples x 4 window steps = 512 transitions)
ROUNDS = 6


def main() -> None:
    from finetune import dpok
    from finetune.rl_math import gaussian_log_prob, step_divergence
    from finetune.run import setup_run
    from finetune.sampler import sample_trajectories

    tag, kind, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(FinetuneConfig, CONFIGS / "dpok.yaml", [
            f"output_dir={tmp}/run", f"model.parameterisation={kind}", "reward.kind=oracle", "curve_every=0",
            "sample_grid_every=0", *overrides])
        run, _ = setup_run(cfg, None)
        d = cfg.dpok
        start, end = cfg.dpok_window
        t0 = time.perf_counter()
        held = []
        for h in range(HELD):  # seeds apart from the training rounds' (their index is the round)
            gen, rng = dpok._round_generator(cfg, 10_000 + h, 0, run.device)
            batch = dpok._sample(run, gen, rng)
            rewards, _ = dpok._score(run, batch)
            adv = dpok._advantages(batch.traj, rewards, d).clamp(-d.advantage_clip, d.advantage_clip)
            held.append((batch.traj, adv, float(rewards.mean())))

        @torch.no_grad()
        def surrogate() -> tuple[float, float]:
            s = k = n = 0.0
            for traj, adv, _ in held:
                for step in range(start, end):
                    si = torch.full((traj.batch_size,), step)
                    pre = None if traj.eps_pre is None else traj.eps_pre[:, step].transpose(0, 1).flatten(0, 1)
                    new = run.policy.step(traj.latents[:, step], si, traj.prompt_embeds, traj.negative_embeds, pre)
                    ref = run.policy.reference_step(traj.latents[:, step], si, traj.prompt_embeds,
                                                    traj.negative_embeds, pre)
                    g = new.gaussian
                    dl = gaussian_log_prob(traj.latents[:, step + 1], g.mean, g.std) - traj.log_probs[:, step]
                    s += float((adv[:, step] * dl).sum())
                    k += float(step_divergence(g.mean, ref.gaussian.mean, g.std, d.divergence).sum())
                    n += traj.batch_size
            return s / n, k / n

        held_s = time.perf_counter() - t0
        rows = []
        for r in range(ROUNDS):
            gen, rng = dpok._round_generator(cfg, r, 0, run.device)
            batch = dpok._sample(run, gen, rng)
            rewards, _ = dpok._score(run, batch)
            stats = dpok._update(run, batch.traj, rewards, rng)
            s, kl = surrogate()
            rows.append({"round": r + 1, "reward": float(rewards.mean()), "held_surrogate": s, "held_kl": kl,
                         "grad_norm": stats["grad_norm"], "clip_fraction": stats["clip_fraction"]})
            print(rows[-1], flush=True)
        # where the trained policy differs from the base: the KL of every step of a full chain
        # (steps outside the trained window [start, end) and the deterministic tail included)
        traj = held[0][0]
        with torch.no_grad():
            full = sample_trajectories(run.policy, traj.prompt_embeds, traj.negative_embeds, run.latent_shape,
                                       torch.Generator().manual_seed(5), traj.prompts)
            profile = []
            for step in range(full.num_steps):
                si = torch.full((full.batch_size,), step)
                args = (full.latents[:, step], si, full.prompt_embeds, full.negative_embeds)
                new, ref = run.policy.step(*args), run.policy.reference_step(*args)
                profile.append(float(step_divergence(new.gaussian.mean, ref.gaussian.mean, new.gaussian.std,
                                                     d.divergence).mean()))
        # the policy gradient's signal: each held-out round's gradient at the trained parameters (its
        # whole window, DPOK's loss against the base's log-probs); the mean pairwise cosine of the
        # rounds' gradients is the share of a round's gradient its fellow rounds agree with (0: noise)
        grads = []
        run.comps.unet.train()
        for traj, adv, _ in held:
            run.optimizer.zero_grad(set_to_none=True)
            n = traj.batch_size
            samples = np.repeat(np.arange(n), end - start)
            steps = np.tile(np.arange(start, end), n)
            dpok._policy_loss(run.accelerator, run.policy, traj, adv, samples, steps, d)[-1].backward()
            grads.append(torch.cat([p.grad.flatten() for p in run.comps.trainable]).clone())
        run.optimizer.zero_grad(set_to_none=True)
        cos = [float(torch.nn.functional.cosine_similarity(grads[i], grads[j], 0))
               for i in range(len(grads)) for j in range(i + 1, len(grads))]
    rec = {"tag": tag, "grad_cosine_between_rounds": float(np.mean(cos)), "kind": kind, "overrides": overrides, "held_reward": float(np.mean([h[2] for h in held])),
           "held_s": held_s, "rows": rows, "kl_by_step": profile, "window": [start, end],
           "command": f"PYTHONPATH=. python experiments/diffcon/probe_learning.py {' '.join(sys.argv[1:])}"}
    (ROOT / f"diag-{time.strftime('%Y-%m-%d')}-side-learning-{tag}-{kind}.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: v for k, v in rec.items() if k != "rows"}))
    print("kl by step:", " ".join(f"{v:.3g}" for v in profile))


if __name__ == "__main__":
    main()
