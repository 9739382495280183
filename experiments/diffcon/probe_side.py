"""Issue 76 item 1: what the side network's first updates do, DPOK and RWL, on the shapes world.

For one DPOK round (the shipped dpok.yaml, oracle reward so no demo is needed) and the first RWL
steps (rwl.yaml), with ``model.parameterisation=side`` built by the real run set-up
(:func:`finetune.run.setup_run`):

* that the optimizer holds exactly the side network's parameters;
* a finite-difference check that the loss moves when g_phi's output moves, on each path: DPOK's
  update with the recorded eps_pre and with the backbone run again (guidance rows [uncond; cond]),
  DPOK's KL term, RWL's guided D_model loss and its D_pre loss: (L(+h) - L(-h)) / 2h along a random
  direction v added to g_phi's output, against autograd's <dL/dg, v>;
* per-layer gradient norms of g_phi (conv_in, time embedding, each down / up block, mid block,
  output norm and conv_out) over the first optimizer steps, with the total before clipping;
* the side output's size against eps_pre's (RMS of lambda * g and of eps_pre) after each step;
* the same first steps with LoRA, for the gradient norm and the output change it makes.

Writes one record, ``experiments/diffcon/diag-<date>-side-<tag>.json`` (packed into records.jsonl) and prints a summary.
Usage (repository root): python experiments/diffcon/probe_side.py [TAG] [methods=dpok,rwl]
[kinds=side,lora] [key=value ...] (the overrides go to every run, e.g. model.side_strength=0.1).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from finetune.config import CONFIGS, FinetuneConfig

ROOT = Path(__file__).resolve().parent
STEPS = 8  # optimizer steps probed per method: one DPOK round (128 transitions / 16)


def layer_of(name: str) -> str:
    """g_phi's parameter name -> its layer group (down_blocks.1.resnets.0.conv1.weight -> down_blocks.1)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


def layer_norms(side: torch.nn.Module) -> dict[str, float]:
    sq: dict[str, float] = {}
    for n, p in side.named_parameters():
        if p.grad is not None:
            sq[layer_of(n)] = sq.get(layer_of(n), 0.0) + float(p.grad.float().pow(2).sum())
    return {k: v ** 0.5 for k, v in sq.items()}


class Nudge:
    """Adds h * v to g_phi's output (a forward hook on the side network) and keeps that output's
    gradient, for the finite-difference check."""

    def __init__(self, side: torch.nn.Module):
        self.h, self.v, self.out = 0.0, None, None
        self.handle = side.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        sample = output.sample if hasattr(output, "sample") else output[0]
        if self.v is None:
            self.v = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0)).to(sample)
        sample = sample + self.h * self.v
        if sample.requires_grad:
            sample.retain_grad()
        self.out = sample
        return type(output)(sample=sample) if hasattr(output, "sample") else (sample,)


def fd_check(side: torch.nn.Module, loss_fn, h: float = 1e-3) -> dict:
    """(L(+h) - L(-h)) / 2h along v against <dL/dg, v>; loss_fn() -> scalar, same draws each call."""
    nudge = Nudge(side)
    try:
        nudge.h = 0.0
        side.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        out = nudge.out
        analytic = float((out.grad * nudge.v).sum()) if out.grad is not None else 0.0
        with torch.no_grad():
            nudge.h = h
            up = float(loss_fn())
            nudge.h = -h
            down = float(loss_fn())
        side.zero_grad(set_to_none=True)
    finally:
        nudge.handle.remove()
    numeric = (up - down) / (2 * h)
    return {"numeric": numeric, "autograd": analytic, "grad_reaches_output": out.grad is not None,
            "rel_err": abs(numeric - analytic) / max(1e-12, abs(numeric))}


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def probe_dpok(kind: str, overrides: list[str], out_dir: Path) -> dict:
    from finetune import dpok
    from finetune.run import setup_run

    cfg = load_config(FinetuneConfig, CONFIGS / "dpok.yaml", [
        f"output_dir={out_dir}", f"model.parameterisation={kind}", "reward.kind=oracle", "curve_every=0",
        "sample_grid_every=0", *overrides])
    run, _ = setup_run(cfg, None)
    d = cfg.dpok
    unet = run.comps.unet
    rec: dict = {"kind": kind, "trainable": sum(p.numel() for p in run.comps.trainable)}
    opt_ids = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    rec["optimizer_holds_trainable"] = opt_ids == {id(p) for p in run.comps.trainable}
    gen, rng = dpok._round_generator(cfg, 0, 0, run.device)
    t0 = time.perf_counter()
    batch = dpok._sample(run, gen, rng)
    rewards, _ = dpok._score(run, batch)
    rec["sample_s"] = time.perf_counter() - t0
    rec["reward_mean"] = float(rewards.mean())
    traj = batch.traj
    adv = dpok._advantages(traj, rewards, d).clamp(-d.advantage_clip, d.advantage_clip)
    start, end = cfg.dpok_window
    samples, steps = dpok.draw_transitions(rng, traj.batch_size, end, d.steps_per_sample, start)
    order = rng.permutation(len(steps))
    unet.train()
    sel = order[:d.minibatch_size]

    def mb_loss(eps=traj.eps_pre, part=-1):
        t = traj if eps is traj.eps_pre else replace(traj, eps_pre=eps)
        return dpok._policy_loss(run.accelerator, run.policy, t, adv, samples[sel], steps[sel], d)[part]

    if kind == "side":
        side = unet.side
        rec["fd_policy_recorded_eps_pre"] = fd_check(side, mb_loss)
        rec["fd_policy_backbone_rerun"] = fd_check(side, lambda: mb_loss(None))
        rec["fd_kl_term"] = fd_check(side, lambda: mb_loss(traj.eps_pre, 0))
    # the first optimizer steps: per-layer gradient norms, the output's change
    x_t = traj.latents[samples[sel], steps[sel]]
    si = torch.as_tensor(steps[sel])
    with torch.no_grad():
        eps0 = run.policy.model_output(unet, x_t, si, traj.prompt_embeds[samples[sel]], traj.negative_embeds[samples[sel]])
    rows = []
    for k, first in enumerate(range(0, len(order), d.minibatch_size)):
        if k >= STEPS:
            break
        s = order[first:first + d.minibatch_size]

        def loss(part, s=s):
            terms = dpok._policy_loss(run.accelerator, run.policy, traj, adv, samples[s[part]], steps[s[part]], d)
            return terms[-1] * (part.stop - part.start) / len(s), terms[0].detach()

        # the gradient before the step (gradient_step clears it): one backward here, then the real step
        run.optimizer.zero_grad(set_to_none=True)
        loss(slice(0, len(s)))[0].backward()
        layers = layer_norms(unet.side) if kind == "side" else {}
        total = float(torch.sqrt(sum(p.grad.float().pow(2).sum() for p in run.comps.trainable if p.grad is not None)))
        run.optimizer.zero_grad(set_to_none=True)
        run.gradient_step([slice(0, len(s))], loss)
        with torch.no_grad():
            eps = run.policy.model_output(unet, x_t, si, traj.prompt_embeds[samples[sel]], traj.negative_embeds[samples[sel]])
        rows.append({"step": k + 1, "grad_norm": total, "layers": layers,
                     "guided_change_rms": rms(eps - eps0), "guided_eps_rms": rms(eps0)})
    rec["steps"] = rows
    return rec


def probe_rwl(kind: str, overrides: list[str], out_dir: Path) -> dict:
    from finetune import rwl
    from finetune.objective import DenoisingObjective
    from finetune.run import setup_run

    cfg = load_config(FinetuneConfig, CONFIGS / "rwl.yaml", [
        f"output_dir={out_dir}", f"model.parameterisation={kind}", "reward.kind=oracle", "sample_grid_every=0",
        "rwl.samples_per_prompt=2", "rwl.pretrain_per_prompt=2", *overrides])
    run, _ = setup_run(cfg, None)
    cache = out_dir.parent / "rwl_data.pt"  # both parameterisations train on the same D_model / D_pre
    if cache.exists():
        shutil.copy(cache, run.out / "rwl_data.pt")
    t0 = time.perf_counter()
    model_set, pre_set = rwl._load_or_build(run)
    rec: dict = {"kind": kind, "build_s": time.perf_counter() - t0}
    shutil.copy(run.out / "rwl_data.pt", cache)
    objective = DenoisingObjective(run.comps.pipe.scheduler)
    unet = run.comps.unet
    unet.train()
    guidance = cfg.sampling.guidance_scale
    gen = torch.Generator().manual_seed(1)
    n = 16
    mi = torch.nonzero(model_set.weights > 0).flatten()[:n]
    noise, t = objective.draw(len(mi), run.latent_shape, gen, run.device)
    texts = run.encode_prompts([model_set.prompts[i] for i in mi])

    def model_loss():
        return objective.loss(run, model_set.latents[mi], texts[0], texts[1], noise, t, guidance)[0].mean()

    def pre_loss():
        return objective.loss(run, pre_set.latents[:len(mi)], texts[0], None, noise, t)[0].mean()

    if kind == "side":
        rec["fd_model_loss_guided"] = fd_check(unet.side, model_loss)
        rec["fd_pre_loss"] = fd_check(unet.side, pre_loss)
    p_model = (model_set.weights > 0).float()
    p_model = p_model / p_model.sum()
    rows = []
    for k in range(STEPS):
        run.optimizer.zero_grad(set_to_none=True)
        model_loss().backward()
        layers = layer_norms(unet.side) if kind == "side" else {}
        run.optimizer.zero_grad(set_to_none=True)
        values = rwl._update(run, k, objective, model_set, pre_set, p_model)
        rows.append({"step": k + 1, "loss": float(values[0]), "grad_norm": float(values[4]), "layers": layers})
    with torch.no_grad():
        rec["model_loss_after"] = float(model_loss())
    rec["steps"] = rows
    return rec


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else "main"
    methods = [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("methods=")]
    methods = methods[0].split(",") if methods else ["dpok", "rwl"]
    kinds = [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("kinds=")]
    kinds = kinds[0].split(",") if kinds else ["side", "lora"]
    overrides = [a for a in sys.argv[2:] if not a.startswith(("methods=", "kinds="))]
    torch.manual_seed(0)
    np.random.seed(0)
    result = {"command": f"PYTHONPATH=. python experiments/diffcon/probe_side.py {' '.join(sys.argv[1:])}",
              "overrides": overrides}
    with tempfile.TemporaryDirectory() as tmp:
        for method, fn in (("dpok", probe_dpok), ("rwl", probe_rwl)):
            if method not in methods:
                continue
            for kind in kinds:
                t0 = time.perf_counter()
                result[f"{method}_{kind}"] = fn(kind, overrides, Path(tmp) / f"{method}-{kind}")
                print(f"{method} {kind}: {time.perf_counter() - t0:.0f} s", flush=True)
    (ROOT / f"diag-{time.strftime('%Y-%m-%d')}-side-{tag}.json").write_text(json.dumps(result, indent=1))
    for key, rec in result.items():
        if not isinstance(rec, dict):
            continue
        print(f"== {key}: trainable {rec.get('trainable')}, optimizer holds them: {rec.get('optimizer_holds_trainable')}")
        for k, v in rec.items():
            if k.startswith("fd_"):
                print(f"  {k}: numeric {v['numeric']:.4g} autograd {v['autograd']:.4g} rel_err {v['rel_err']:.2g}")
        for row in rec["steps"]:
            lay = " ".join(f"{n}={g:.3g}" for n, g in row["layers"].items())
            extra = " ".join(f"{k}={row[k]:.4g}" for k in ("loss", "guided_change_rms", "guided_eps_rms") if k in row)
            print(f"  step {row['step']}: grad {row['grad_norm']:.3g} {extra} | {lay}")


if __name__ == "__main__":
    main()
