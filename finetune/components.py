"""The accelerator and the model of a fine-tuning run: :func:`make_accelerator`, the pipeline with
its trainable part (LoRA adapter, the whole UNet or a side network) and frozen reference (:class:`Components`,
:func:`load_components`) and the weight dtype of the mixed precision."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.compile import compile_unet, resolve_compile
from core.errors import UserError
from core.families import pipeline_family
from core.loading import default_device, load_sd_pipeline
from core.side import SideUNet, build_side
from core.sampling import precision_dtype, resolve_precision
from finetune.config import FinetuneConfig
from finetune.denoiser import lora_targets, text_encoders


def make_accelerator(cfg: FinetuneConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps one state per process and refuses a second run with another mixed
    # precision (the demo, the bench, a notebook); the distributed state (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=resolve_precision(cfg.mixed_precision, default_device()),
        gradient_accumulation_steps=cfg.optim.grad_accum, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))


@dataclass
class Components:
    pipe: object  # a pipeline of a fine-tunable family (core.families)
    # the trained denoiser: a UNet (with LoRA adapter, all of it, or a core.side.SideUNet), or a flow
    # family's transformer with a LoRA adapter
    unet: torch.nn.Module
    reference_unet: torch.nn.Module | None  # None: the adapter disabled (LoRA) or the backbone (side) is the reference
    trainable: list[torch.nn.Parameter] = field(default_factory=list)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.unet.named_parameters())
        missing = [n for n in state if n not in params]
        if missing:
            raise UserError(f"checkpoint parameters {missing[:3]} do not exist in this model.",
                            "resume with the same model and parameterisation, or start a new output_dir.")
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)


def load_components(cfg: FinetuneConfig, device, weight_dtype: torch.dtype) -> Components:
    pipe = load_sd_pipeline(cfg.model.pipeline, device=device)
    family = pipeline_family(pipe)
    kind = cfg.model.parameterisation
    unet = getattr(pipe, family.denoiser)  # the UNet, or a flow family's transformer
    frozen = [pipe.vae, *text_encoders(pipe)] + ([unet] if kind in ("lora", "side") else [])
    for module in frozen:
        module.requires_grad_(False)
        if weight_dtype != torch.float32:  # frozen weights in the autocast dtype halve their memory
            module.to(dtype=weight_dtype)
    if kind == "side":  # the backbone frozen, the side network trained in fp32; the reference is the backbone
        side = build_side(unet.config, cfg.model.side_width).to(device)
        unet = pipe.unet = SideUNet(unet, side, cfg.model.side_strength)
        reference = None
    elif kind == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha,
                                    init_lora_weights="gaussian",
                                    target_modules=lora_targets(cfg.model, family)))
        # Trainable LoRA weights stay fp32 under bf16/fp16 autocast (stable optimizer updates).
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        reference = None
    else:
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
        if weight_dtype != torch.float32:
            reference.to(dtype=weight_dtype)
        unet.requires_grad_(True).float()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    if not trainable and kind == "lora":
        raise UserError(f"no trainable parameters: the LoRA target modules matched nothing in the {family.denoiser_title}.",
                        f"set model.lora_targets to attention projections of this {family.denoiser_title} "
                        f"(got {list(cfg.model.lora_targets)}).")
    if cfg.compute.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # After the adapter is in place, so that the compiled graph includes it.  The full-UNet
    # reference copy is only ever run without gradient and stays eager.
    if not family.flow:  # core.compile's graph is a UNet's
        compile_unet(unet.side if kind == "side" else unet, resolve_compile(cfg.compute.compile, device))
    return Components(pipe, unet, reference, trainable)


def weight_dtype_for(accelerator) -> torch.dtype:
    return precision_dtype(accelerator.mixed_precision) or torch.float32
