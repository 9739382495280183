"""sweep.py with the flow-matching loss's noise levels drawn uniformly (u ~ U(0, 1)) instead of SD3's
logit-normal (finetune.flow_rwl.FlowMatchingObjective.draw, patched for this run only): does fitting
the high noise levels, where the probe puts shapes-flow's decisions, change what RWL can do?

    .venv/bin/python experiments/flow-dpok/sweep_uniform_sigma.py LABEL [key=value ...]"""

from __future__ import annotations

import json
import sys

import torch

from finetune.flow_rwl import FlowMatchingObjective
from sweep import sweep


def uniform_draw(self, n: int, latent_shape: tuple[int, ...], gen: torch.Generator, device):
    noise = torch.randn((n, *latent_shape), generator=gen, device=device)
    u = torch.rand((n,), generator=gen, device=device)
    index = (u * self.scheduler.config.num_train_timesteps).long().clamp_max(len(self.scheduler.sigmas) - 1)
    return noise, self.scheduler.sigmas.to(device)[index].float()


if __name__ == "__main__":
    FlowMatchingObjective.draw = uniform_draw
    out = sweep(sys.argv[1], sys.argv[2:])
    record = json.loads(out.read_text())
    record["command"] = record["command"].replace("sweep.py", "sweep_uniform_sigma.py")
    out.write_text(json.dumps(record, indent=1))
    print(out)
