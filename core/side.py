"""The side network of Diffusion Controller (DiffCon, Yang et al. 2026, sec. "parameterisation"):
the fine-tuned noise prediction is the frozen pre-trained one plus a light control correction,

    eps(x_t, t, c) = eps_pre(x_t, t, c) + lambda * g_phi(x_t, eps_pre, t, c)

with g_phi a small latent UNet and the backbone never changed (gray-box).  The paper conditions
g_phi on the frozen model's exposed per-step outputs; here it is fed x_t and eps_pre as 2C input
channels, the timestep and the prompt's text embedding (cross-attention), so any UNet that
exposes its output works, without its hidden features.  Its output layer starts at zero, so a
fresh side network is the pre-trained model exactly.

:class:`SideUNet` wraps the frozen UNet and g_phi as one module with the UNet's call signature, so
every pipeline and loop that calls ``pipe.unet`` samples and trains it unchanged; passing
``eps_pre=`` (recorded while sampling) skips the backbone: DPOK's update then runs g_phi alone.

Saved format (a run folder's ``side/``): g_phi as a diffusers ``UNet2DConditionModel``
(``config.json``, ``diffusion_pytorch_model.safetensors``) and ``side_adapter.json`` holding the
strength lambda it was trained with; :func:`load_side` puts it beside any pipeline's UNet, with
lambda settable at load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.compile import unwrap
from core.errors import UserError
from core.files import write_text_atomic

SIDE_DIR = "side"  # in a run folder: the side network
SIDE_FILE = "side_adapter.json"  # in SIDE_DIR: lambda and what the network is fed
SIDE_WEIGHTS = "diffusion_pytorch_model.safetensors"  # in SIDE_DIR: g_phi (diffusers' file name)
SIDE_GROUPS = 8  # group-norm groups of the side network; its widths are multiples of this


def side_config(base: dict, width: float) -> dict:
    """The side network's UNet2DConditionModel config from its backbone's ``base`` config: the same
    block types and text width, 2C input channels (x_t, eps_pre), C output channels, every block
    ``width`` times as wide (rounded to SIDE_GROUPS, at least that) with one layer per block.
    At width 0.15 on SD-1.5 that is about 1 % of the backbone's parameters (DiffCon: ~12 M)."""
    widths = [max(SIDE_GROUPS, SIDE_GROUPS * round(c * width / SIDE_GROUPS)) for c in base["block_out_channels"]]
    heads = base.get("attention_head_dim") or 8
    heads = math.gcd(heads if isinstance(heads, int) else heads[0], *widths)
    keys = ("down_block_types", "up_block_types", "mid_block_type", "cross_attention_dim", "sample_size",
            "act_fn", "flip_sin_to_cos", "freq_shift")
    return {**{k: base[k] for k in keys if k in base}, "in_channels": 2 * base["in_channels"],
            "out_channels": base["out_channels"], "block_out_channels": widths, "layers_per_block": 1,
            "norm_num_groups": SIDE_GROUPS, "attention_head_dim": heads}


def build_side(base_config: dict, width: float) -> torch.nn.Module:
    """A fresh side network for a backbone of ``base_config``, its output layer zero (g_phi = 0)."""
    from diffusers import UNet2DConditionModel

    side = UNet2DConditionModel(**side_config(dict(base_config), width))
    torch.nn.init.zeros_(side.conv_out.weight)
    torch.nn.init.zeros_(side.conv_out.bias)
    return side


@dataclass
class SideOutput:
    sample: torch.Tensor  # eps_pre + lambda * g_phi, (B, C, H, W) in the input's dtype
    eps_pre: torch.Tensor  # the frozen backbone's output (B, C, H, W)


class SideUNet(torch.nn.Module):
    """A frozen UNet ``base`` plus ``strength`` times the side network ``side`` (module doc), with
    the UNet's call signature and config, so it stands in for ``pipe.unet`` anywhere."""

    def __init__(self, base: torch.nn.Module, side: torch.nn.Module, strength: float):
        super().__init__()
        self.base, self.side, self.strength = base, side, float(strength)
        self.base.requires_grad_(False)

    @property
    def config(self):
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def enable_gradient_checkpointing(self) -> None:
        self.side.enable_gradient_checkpointing()

    def forward(self, sample, timestep, encoder_hidden_states, *args, eps_pre: torch.Tensor | None = None,
                return_dict: bool = True, **kwargs):
        """``eps_pre``: the backbone's output at these rows, when already known (recorded while
        sampling); else the backbone runs, without gradient (it is frozen)."""
        if eps_pre is None:
            with torch.no_grad():
                eps_pre = self.base(sample, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs)[0]
        dtype = self.side.conv_in.weight.dtype
        g = self.side(torch.cat([sample, eps_pre.to(sample.dtype)], 1).to(dtype), timestep,
                      encoder_hidden_states=encoder_hidden_states.to(dtype)).sample
        out = (eps_pre.float() + self.strength * g.float()).to(sample.dtype)
        return SideOutput(out, eps_pre) if return_dict else (out,)


def is_side(unet) -> bool:
    """Whether ``unet`` (possibly DDP- or compile-wrapped) is a :class:`SideUNet`."""
    return isinstance(unwrap(unet), SideUNet)


def save_side(unet: SideUNet, out: Path) -> None:
    """``out/side/``: the side network in diffusers format and its :data:`SIDE_FILE`."""
    folder = out / SIDE_DIR
    unet.side.save_pretrained(folder, safe_serialization=True)
    write_text_atomic(folder / SIDE_FILE, json.dumps({
        "strength": unet.strength, "formula": "eps = eps_pre + strength * side(cat(x_t, eps_pre), t, text)"}, indent=2))


def load_side(folder: Path, base: torch.nn.Module, strength: float | None = None) -> SideUNet:
    """The side network saved in ``folder`` (:func:`save_side`) beside the UNet ``base``, at its
    saved strength or ``strength``."""
    from diffusers import UNet2DConditionModel

    try:
        saved = json.loads((folder / SIDE_FILE).read_text())
        side = UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"the side network in {folder} cannot be read: {e}",
                        "pass the folder of a finished side-network run (make finetune with "
                        "model.parameterisation=side).") from None
    theirs, ours = side.config, base.config
    if theirs.in_channels != 2 * ours.in_channels or theirs.cross_attention_dim != ours.cross_attention_dim:
        raise UserError(f"the side network in {folder} was built for another UNet than this pipeline's "
                        f"(inputs {theirs.in_channels}, text width {theirs.cross_attention_dim}).",
                        "apply it to the base pipeline it was trained from.")
    side.to(device=base.device).eval()
    return SideUNet(base, side, saved["strength"] if strength is None else strength)
