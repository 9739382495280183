"""Can the side network represent what LoRA DPOK learnt?  (issue 60: why side-network DPOK fails)

Distils the demo's LoRA DPOK model into a fresh side network (``model.side_width`` as shipped) by
regression: on states x_t of the LoRA model's own sampling chains (the demo's targets, both
guidance halves, every step), g_phi is fitted to eps_lora - eps_pre by mean squared error.  Reports
the share of that correction's variance g_phi explains on held-out chains (R^2, all steps and the
trained window), then samples base, LoRA and the distilled side network from the same noise and
lets the oracle judge them.  If g_phi can represent the correction, the side network's DPOK failure
is the policy gradient's signal, not its capacity.

    PYTHONPATH=. python experiments/diffcon/distil_side.py SEED [STEPS]   # writes distil-seed<SEED>.json here
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from core.loading import load_model, resolve_model
from core.side import SideUNet, build_side
from finetune.config import FinetuneConfig
from finetune.dpok import CURVE_JUDGE
from finetune.policy import DiffusionPolicy
from finetune.sampler import decode_latents, encode_prompts, sample_trajectories
from finetune.scheduler import DDIMSchedule
from reward.reward_fn import load_reward

seed = int(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
demo = Path(f"runs/demo-s{seed}")
torch.manual_seed(seed)
cfg = load_config(FinetuneConfig, demo / "finetune-dpok" / "config.yaml")  # the demo's sampling and window
pipe = load_model(resolve_model("shapes/models/shapes-sd"), device="cpu")
lora = load_model(resolve_model(demo / "finetune-dpok"), device="cpu").unet.eval()
base = pipe.unet.eval()
side = SideUNet(base, build_side(base.config, cfg.model.side_width), 1.0)
schedule = DDIMSchedule.from_scheduler(pipe.scheduler, cfg.sampling.num_inference_steps, cfg.sampling.eta)
g = cfg.sampling.guidance_scale
targets = [t for t in (demo / "targets.txt").read_text().splitlines() if t.strip()]
shape = (base.config.in_channels, base.config.sample_size, base.config.sample_size)


def chains(prompts, gen_seed):
    cond, uncond = encode_prompts(pipe, prompts, "cpu")
    traj = sample_trajectories(DiffusionPolicy(lora, schedule, g), cond, uncond, shape,
                               torch.Generator().manual_seed(gen_seed), prompts)
    b, t = traj.batch_size, traj.num_steps
    x = traj.latents[:, :t].flatten(0, 1)  # (B T, C, H, W): the state before each step
    idx = torch.arange(t).repeat(b)
    ts = schedule.timesteps[idx]
    c, u = cond.repeat_interleave(t, 0), uncond.repeat_interleave(t, 0)
    x2, t2, e2 = torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([u, c])
    with torch.no_grad():
        pre = torch.cat([base(*a, encoder_hidden_states=e).sample for *a, e in zip(*(v.split(512) for v in (x2, t2, e2)))])
        out = torch.cat([lora(*a, encoder_hidden_states=e).sample for *a, e in zip(*(v.split(512) for v in (x2, t2, e2)))])
    return x2, t2, e2, pre, out - pre, torch.cat([idx, idx])


train = chains([p for p in targets for _ in range(8)], 1000 + seed)
held = chains([p for p in targets for _ in range(2)], 2000 + seed)
opt = torch.optim.Adam(side.side.parameters(), lr=1e-3)
t0 = time.perf_counter()
n = train[0].shape[0]
for i in range(steps):
    j = torch.randint(0, n, (64,))
    out = side(train[0][j], train[1][j], train[2][j], eps_pre=train[3][j]).sample
    loss = torch.nn.functional.mse_loss(out - train[3][j], train[4][j])
    opt.zero_grad()
    loss.backward()
    opt.step()
fit_s = time.perf_counter() - t0


def r2(window):
    x, t, e, pre, corr, idx = held
    keep = (idx >= window[0]) & (idx < window[1])
    with torch.no_grad():
        pred = torch.cat([side(x[k], t[k], e[k], eps_pre=pre[k]).sample - pre[k]
                          for k in torch.arange(len(x))[keep].split(256)])
    target = corr[keep]
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


judge = load_reward(CURVE_JUDGE, "cpu")
prompts = [p for p in targets for _ in range(8)]
cond, uncond = encode_prompts(pipe, prompts, "cpu")
aligned = {}
for name, unet in (("base", base), ("lora", lora), ("side (distilled)", side)):
    traj = sample_trajectories(DiffusionPolicy(unet, schedule, g), cond, uncond, shape,
                               torch.Generator().manual_seed(3000 + seed), prompts)
    aligned[name] = float(np.mean(judge(decode_latents(pipe.vae, traj.final_latents), prompts).numpy() == 1))
window = tuple(cfg.dpok_window)
record = {"command": f"PYTHONPATH=. python experiments/diffcon/distil_side.py {seed} {steps}",
          "side_width": cfg.model.side_width, "side_parameters": sum(p.numel() for p in side.side.parameters()),
          "train_states": n, "steps": steps, "fit_seconds": fit_s, "final_train_mse": loss.item(),
          "r2_all_steps": r2((0, cfg.sampling.num_inference_steps)), "r2_window": r2(window), "window": window,
          "oracle_aligned": aligned, "images_per_model": len(prompts)}
Path(f"experiments/diffcon/distil-seed{seed}.json").write_text(json.dumps(record, indent=2))
print(json.dumps(record, indent=2))
