"""torch.compile of a diffusers UNet: for the fine-tuning loops (:func:`compile_unet`) and for plain
sampling (:func:`sampling_unet`), with a compile cache that outlives the process.

The whole UNet is compiled as one graph (inductor, default mode), in place: ``nn.Module.compile``
keeps the module object, so PEFT adapters, DDP and ``disable_adapters`` (the KL reference) work on
it as before; each kind of pass (sampling; update forward+backward; the reference with the
adapter off) and each batch shape compiles once per process.  Shapes are static
(``dynamic=False``): a new batch size is a graph of its own, never a slower shape-generic one.
Compiling the UNet block by block (regional compilation) was measured too and lost to this on
every pass (experiments/bench).

Plain sampling (``make generate``, ``make eval``, the demo) compiles one UNet per architecture and
process and reuses it for every model of that architecture: :func:`sampling_unet` copies a model's
weights (a LoRA run's already fused by ``core.loading.load_model``) into that one compiled module
instead of compiling each model anew.  The compiled graph takes the weights as inputs (inductor
does not freeze them), so new values need no new graph.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Literal

CompileMode = Literal["auto", "on", "off"]
# Graphs per process: pass kinds x batch shapes (sampling, update, reference, sample grids, curve)
RECOMPILE_LIMIT = 32
# Where inductor keeps compiled graphs between processes (its FX-graph and AOTAutograd caches), so
# that a second run loads a graph instead of generating and building C++ again.  Inductor's own
# default is a folder under /tmp, which a reboot empties; TORCHINDUCTOR_CACHE_DIR set by the user wins.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shapes-align" / "torchinductor"


def resolve_compile(mode: CompileMode, device) -> bool:
    """Whether to compile a UNet on ``device``, for every ``compile`` key (``sampling.compile``,
    ``compute.compile``, the demo's and the loop's ``compile``): ``auto`` is on with CUDA and off
    elsewhere, decided by the device alone, never by a job's size, so a stage compiles the same
    way in a long workflow as on its own or resumed after a kill.  Off on the CPU, where a
    compile was measured not to repay itself on the demo's stages (experiments/demo-budget).
    ``on`` on the CPU needs a C++ compiler for inductor's code (``$CXX`` or g++), else it is an
    error."""
    import torch

    from core.errors import UserError

    kind = torch.device(device).type
    if mode == "auto":
        return kind == "cuda"
    if mode == "on" and kind == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        raise UserError("compile=on needs a C++ compiler for torch.compile's CPU code, and there is "
                        f"no {os.environ.get('CXX', 'g++')} on the PATH.",
                        "install one (e.g. apt-get install g++), or set compile=off.")
    return mode == "on"


def use_compile_cache() -> None:
    """Point inductor's caches at :data:`CACHE_DIR` unless the user chose a folder.  Called where
    the compile happens (:func:`compile_unet`), before inductor first looks: it writes its own
    default into the variable then, so later would be too late."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR))


def unwrap(module):
    """The module inside its DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers: the
    one that owns the adapters, the side network's parts and the weights."""
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return module


def compile_unet(unet, on: bool) -> None:
    """Compile ``unet`` in place when ``on``."""
    if not on:
        return
    import torch._dynamo

    use_compile_cache()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    unet.compile(dynamic=False)


# One compiled sampling UNet per architecture, device and dtype (_architecture).
_SAMPLING_UNETS: dict[tuple, object] = {}


def _architecture(unet, dtype) -> tuple:
    """What one compiled sampling UNet serves: the model class and config (a LoRA-adapted UNet has
    its base's), device and weight dtype."""
    config = json.dumps(dict(unet.config), sort_keys=True, default=str) if hasattr(unet, "config") else id(unet)
    return type(unet).__qualname__, config, str(next(unet.parameters()).device), str(dtype)


def sampling_unet(unet, rows: int, state: dict | None = None):
    """A module to sample with in place of ``unet``: the compiled UNet of this process for
    ``unet``'s architecture, holding ``unet``'s weights, or ``state`` (a plain state dict of that
    architecture: a LoRA-adapted UNet's fused weights, ``finetune.policy.fused_state``; a diffusers
    model is then rebuilt from ``unet.config``), called ``rows`` rows at a time.

    The first UNet of an architecture is copied and the copy compiled (the caller's module is never
    compiled or changed); every later call copies the given weights into that copy, so another
    model, or the same model after training, samples through the graphs already compiled.  Each
    call copies: a few MB for the shapes model, well under one sampling step of Stable Diffusion.
    Every UNet call goes through :func:`_fixed_rows_class`, one signature and one batch shape, so
    the pipeline's and the RL sampler's calls, short last batches and longer ones all run one graph."""
    import torch

    state = unet.state_dict() if state is None else state
    first = next(iter(state.values()))
    key = _architecture(unet, first.dtype)
    compiled = _SAMPLING_UNETS.get(key)
    if compiled is None:
        if hasattr(unet, "from_config"):  # a diffusers model of the same config, without adapter layers
            compiled = type(unet).from_config(unet.config).to(device=first.device, dtype=first.dtype)
        else:
            compiled = copy.deepcopy(unet)
        compiled = compiled.eval().requires_grad_(False)
        compile_unet(compiled, True)
        _SAMPLING_UNETS[key] = compiled
    with torch.no_grad():
        compiled.load_state_dict(state, strict=True)  # copies in place: the compiled graphs stay valid
    return _fixed_rows_class()(compiled, rows)


@functools.cache
def _fixed_rows_class():
    import torch

    class FixedRowsUNet(torch.nn.Module):
        """A diffusers UNet's call (the pipeline's and ``unet(x, t, encoder_hidden_states=...)``)
        made into calls of exactly ``rows`` rows with a (rows,) timestep: a shorter call is padded
        with copies of its last row, a longer one split; the outputs of the padding are dropped.
        Each row's output does not depend on the other rows, so the images are those of an
        unpadded call up to float rounding.  Other attributes (config, dtype) are the UNet's."""

        def __init__(self, unet, rows: int):
            super().__init__()
            self.unet, self.rows = unet, rows

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self._modules["unet"], name)

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                    added_cond_kwargs=None, return_dict: bool = True):
            if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs:
                # conditioning this path does not pad (not used by the models we compile for)
                out = self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                                cross_attention_kwargs=cross_attention_kwargs,
                                added_cond_kwargs=added_cond_kwargs).sample
            else:
                n = sample.shape[0]
                t = torch.as_tensor(timestep, device=sample.device)
                t = (t.reshape(1) if t.ndim == 0 else t).expand(n)
                parts = []
                for i in range(0, n, self.rows):
                    x, tt, e = sample[i:i + self.rows], t[i:i + self.rows], encoder_hidden_states[i:i + self.rows]
                    pad = self.rows - x.shape[0]
                    if pad:
                        x, tt, e = (torch.cat([v, v[-1:].expand(pad, *v.shape[1:])]) for v in (x, tt, e))
                    # contiguous inputs whatever the caller passed (an expanded timestep has stride
                    # 0): the graph is specialised to its inputs' strides, so other strides recompile
                    x, tt, e = x.contiguous(), tt.contiguous(), e.contiguous()
                    parts.append(self.unet(x, tt, encoder_hidden_states=e).sample[:self.rows - pad])
                out = torch.cat(parts)
            return _Output(out) if return_dict else (out,)

    return FixedRowsUNet


class _Output:
    """What a diffusers UNet returns with return_dict=True, as far as its callers read it."""

    def __init__(self, sample):
        self.sample = sample
