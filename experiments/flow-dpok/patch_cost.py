"""What a shapes-flow training step costs at 2 x 2 and at 1 x 1 patches (issue 73): forward, backward
and AdamW of the SD3 transformer shapes.training.flow builds, batch 64 of random 16 x 16 x 4 latents,
the mean of 4 steps after 2 warm-up steps, both in one run (a timing is a ratio measured together).

    .venv/bin/python experiments/flow-dpok/patch_cost.py"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from shapes.training.flow import TransformerArch, build_transformer

if __name__ == "__main__":
    torch.set_num_threads(2)
    seconds = {}
    for arch in (TransformerArch(), replace(TransformerArch(), patch_size=1, pos_embed_max_size=32)):
        model = build_transformer(arch, 16, 4, 128)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x, text, pooled = torch.randn(64, 4, 16, 16), torch.randn(64, 10, 128), torch.randn(64, 128)
        for i in range(6):
            if i == 2:
                t0 = time.perf_counter()
            out = model(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.rand(64) * 1000).sample
            out.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        seconds[arch.patch_size] = (time.perf_counter() - t0) / 4
        print(f"patch {arch.patch_size}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"{seconds[arch.patch_size]:.2f} s a step", flush=True)
    print(f"1 x 1 / 2 x 2: {seconds[1] / seconds[2]:.1f}x ({torch.backends.cpu.get_cpu_capability()})")
