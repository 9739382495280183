"""torch.compile of a diffusers UNet for the fine-tuning loops.

The whole UNet is compiled as one graph (inductor, default mode), in place: ``nn.Module.compile``
keeps the module object, so PEFT adapters, DDP and ``disable_adapters`` (the KL reference) work on
it as before; each kind of pass (sampling; update forward+backward; the reference with the
adapter off) and each batch shape compiles once per process.  Shapes are static
(``dynamic=False``): a new batch size is a graph of its own, never a slower shape-generic one.
Compiling the UNet block by block (regional compilation) was measured too and lost to this on
every pass (experiments/bench).
"""

from __future__ import annotations

from typing import Literal

CompileMode = Literal["auto", "on", "off"]
# Graphs per process: pass kinds x batch shapes (sampling, update, reference, sample grids, curve)
RECOMPILE_LIMIT = 32


def resolve_compile(mode: CompileMode, device) -> bool:
    """Whether to compile: ``auto`` is on for CUDA, off elsewhere."""
    if mode != "auto":
        return mode == "on"
    import torch

    return torch.device(device).type == "cuda"


def compile_unet(unet, on: bool) -> None:
    """Compile ``unet`` in place when ``on``."""
    if not on:
        return
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    unet.compile(dynamic=False)
