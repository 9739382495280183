"""What both methods share: the accelerator, the model and its trainable part (LoRA or the whole
UNet), the reward, prompts, the output folder, checkpoints and saving the result."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from core.config import load_config, save_config, to_dict
from core.errors import UserError
from core.images import image_grid, to_uint8
from core.loading import check_folder, load_sd_pipeline, pipeline_geometry
from core.sampling import image_size, pipeline_image_size
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig, RewardConfig
from finetune.policy import DiffusionPolicy
from finetune.scheduler import DDIMSchedule
from reward import load_reward_fn
from shapes.oracle import judge
from shapes.world import Prompt, prompt_set

RESULT_FILES = ("metrics.json", "pytorch_lora_weights.safetensors", "model_index.json")
RESUMABLE = ("checkpoints", "rwl_data.pt")  # what a run leaves to continue from


class RewardFn(Protocol):
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] on any device -> rewards (B,) fp32."""


# --------------------------------------------------------------------------------------------
# Reward


class OracleReward:
    """The shapes-world oracle as a reward: Verdict.score in [-1, 3] (2 for aligned, plus the share
    of attributes right, minus 1/4 per missing or extra object).  For ablations only: the oracle is
    also the evaluator, so a model trained on it is graded by its own teacher."""

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        arr = to_uint8(images)
        scores = [judge(a, Prompt.parse(p)).score(Prompt.parse(p)) for a, p in zip(arr, prompts)]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def load_reward(cfg: RewardConfig, device) -> RewardFn:
    if cfg.kind == "oracle":
        return OracleReward()
    path = Path(cfg.path)
    if not path.is_dir():
        raise UserError(f"reward model folder {path} does not exist.",
                        "train one with `make reward` (or set reward.path to a RewardModel folder).")
    return load_reward_fn(path, device=device)  # the reward stage's model: calibrated P(rater says good)


def score_in_batches(reward: RewardFn, images: torch.Tensor, prompts: list[str], batch_size: int) -> torch.Tensor:
    return torch.cat([reward(images[i:i + batch_size], prompts[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)])


# --------------------------------------------------------------------------------------------
# Prompts


def training_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts.prompts_file:
        return read_prompts_file(cfg.prompts.prompts_file)
    return [p.text for p in prompt_set(cfg.prompts.split)]


def prompt_group_ids(prompts: list[str]) -> torch.Tensor:
    """Integer ids (B,) grouping identical prompts, for per-prompt statistics."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts])


# --------------------------------------------------------------------------------------------
# Accelerator, model, trainable parameters


def make_accelerator(cfg: FinetuneConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps one state per process and refuses a second run with another mixed
    # precision (the demo, the bench, a notebook); the distributed state (PartialState) is kept.
    AcceleratorState._reset_state()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=cfg.optim.grad_accum, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")))


@dataclass
class Components:
    pipe: object  # StableDiffusionPipeline
    unet: torch.nn.Module  # the trained UNet (with LoRA adapter, or all of it)
    reference_unet: torch.nn.Module | None  # None: LoRA with the adapter disabled is the reference
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
    frozen = [pipe.vae, pipe.text_encoder] + ([pipe.unet] if cfg.model.parameterisation == "lora" else [])
    for module in frozen:
        module.requires_grad_(False)
        if weight_dtype != torch.float32:  # frozen weights in the autocast dtype halve their memory
            module.to(dtype=weight_dtype)
    unet = pipe.unet
    if cfg.model.parameterisation == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha,
                                    init_lora_weights="gaussian",
                                    target_modules=list(cfg.model.lora_targets)))
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
    if not trainable:
        raise UserError("no trainable parameters: the LoRA target modules matched nothing in the UNet.",
                        f"set model.lora_targets to attention projections of this UNet "
                        f"(got {list(cfg.model.lora_targets)}).")
    return Components(pipe, unet, reference, trainable)


def weight_dtype_for(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


# --------------------------------------------------------------------------------------------
# Output folder, checkpoints, results


def prepare_output_dir(cfg: FinetuneConfig) -> Path:
    """Refuse to overwrite a finished result unless ``overwrite`` is set; keep checkpoints for
    resuming; save the resolved config."""
    out = Path(cfg.out)
    finished = [f for f in RESULT_FILES if (out / f).exists()]
    if finished and not cfg.overwrite:
        raise UserError(f"{out} already holds a finished run ({', '.join(finished)}).",
                        "choose another output_dir, or pass overwrite=true to replace it.")
    if finished and cfg.overwrite:
        for f in finished:
            (out / f).unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(accelerator, out: Path, step: int, state: dict) -> Path:
    """Write ``checkpoints/step-<n>`` atomically (main process only; all processes wait)."""
    accelerator.wait_for_everyone()
    final = out / "checkpoints" / f"step-{step:06d}"
    if accelerator.is_main_process:
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = dict(state, rng={"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                 "python": random.getstate()})
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted((out / "checkpoints").glob("step-*"))[:-2]:  # keep the newest two
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out: Path) -> dict | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    if not ckpts:
        return None
    try:
        state = torch.load(ckpts[-1] / "state.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint we cannot read must not be silently skipped
        raise UserError(f"checkpoint {ckpts[-1]} is unreadable ({e}).",
                        "delete that folder to resume from the one before, or pass resume=false.") from None
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return state


def save_result(accelerator, comps: Components, cfg: FinetuneConfig, out: Path, metrics: dict) -> None:
    """LoRA weights loadable by ``pipeline.load_lora_weights(out)`` (or a full pipeline folder),
    then metrics.json last, so its presence marks a finished run."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unet = accelerator.unwrap_model(comps.unet)
    if cfg.model.parameterisation == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
        StableDiffusionPipeline.save_lora_weights(save_directory=str(out), unet_lora_layers=layers,
                                                  safe_serialization=True)
    else:
        comps.pipe.unet = unet
        comps.pipe.save_pretrained(out)
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")


def warmup_constant_lr(optimizer, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` optimizer steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)))


def log_images(accelerator, tag: str, images: torch.Tensor, step: int, path: Path | None = None,
               ncols: int = 4) -> None:
    """A grid of images (B, 3, H, W) in [0, 1] to TensorBoard and, if given, a PNG file."""
    if not accelerator.is_main_process:
        return
    grid = image_grid(images, ncols)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
    accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, grid, step, dataformats="HWC")


# --------------------------------------------------------------------------------------------
# One run's setup, shared by DPOK and RWL


@dataclass
class Run:
    cfg: FinetuneConfig
    out: Path
    accelerator: object
    comps: Components
    schedule: DDIMSchedule
    policy: DiffusionPolicy
    reward: RewardFn
    prompts: list[str]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    latent_shape: tuple[int, int, int]  # (C, h, w) of the UNet's latents
    image_size: tuple[int, int]  # (H, W) pixels of the images sampled and trained on

    @property
    def device(self):
        return self.accelerator.device

    def checkpoint_state(self, **extra) -> dict:
        return dict(trainable=self.comps.trainable_state(), optimizer=self.optimizer.state_dict(),
                    lr_scheduler=self.lr_scheduler.state_dict(), **extra)

    def restore(self, state: dict) -> None:
        self.comps.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


def _check_resumable(out: Path, cfg: FinetuneConfig) -> None:
    """A checkpoint only continues the run that wrote it: same config except how long it runs."""
    saved = out / "config.yaml"
    if not saved.exists():
        return
    free = {"resume", "overwrite", "output_dir"}
    # through the loader, so keys added since that run began (at their defaults) compare equal
    old = {k: v for k, v in to_dict(load_config(FinetuneConfig, saved)).items() if k not in free}
    new = {k: v for k, v in to_dict(cfg).items() if k not in free}
    for tree in (old, new):
        tree.get("dpok", {}).pop("rounds", None)
        tree.get("rwl", {}).pop("steps", None)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise UserError(f"{out} holds checkpoints of a run with a different config (sections {changed}).",
                        "resume with the same config, pass resume=false to start over, or use another output_dir.")


def _check_inputs(cfg: FinetuneConfig, reward_fn: RewardFn | None) -> None:
    """Fail on missing inputs before anything is written."""
    check_folder(Path(cfg.model.pipeline), "model_index.json", "Stable Diffusion pipeline")
    height, width = image_size(cfg.sampling.height, cfg.sampling.width, *pipeline_geometry(cfg.model.pipeline))
    if height != width and (cfg.reward.kind == "oracle" or cfg.curve_every):
        raise UserError(f"the shapes-world oracle (reward.kind=oracle, curve_every) judges square images; "
                        f"this run samples {width}x{height}.",
                        "set sampling.height equal to sampling.width, or use a learned reward and curve_every=0.")
    if height != width and cfg.method == "rwl" and cfg.rwl.pretrain_source == "shapes":
        raise UserError(f"rwl.pretrain_source=shapes renders square images; this run samples {width}x{height}.",
                        "set sampling.height equal to sampling.width, or rwl.pretrain_source to a dataset root "
                        "of images at that size.")
    if reward_fn is None and cfg.reward.kind == "learned" and not Path(cfg.reward.path).is_dir():
        raise UserError(f"reward model folder {cfg.reward.path} does not exist.",
                        "train one with `make reward` (or set reward.path to a RewardModel folder).")


def setup_run(cfg: FinetuneConfig, reward_fn: RewardFn | None) -> tuple[Run, dict | None]:
    """Validate, prepare the output folder, load models, reward and optimizer through accelerate;
    returns the run and the newest checkpoint's state (None when starting fresh)."""
    cfg = cfg.validate()
    _check_inputs(cfg, reward_fn)
    out = Path(cfg.out)
    if cfg.resume and not cfg.overwrite:
        if any((out / name).exists() for name in RESUMABLE):
            _check_resumable(out, cfg)
    else:  # starting over: drop what an earlier run left to resume from
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in RESUMABLE[1:]:
            (out / name).unlink(missing_ok=True)
    out = prepare_output_dir(cfg)
    accelerator = make_accelerator(cfg, out)
    seed_everything(cfg.seed)
    comps = load_components(cfg, accelerator.device, weight_dtype_for(accelerator))
    schedule = DDIMSchedule.from_scheduler(comps.pipe.scheduler, cfg.sampling.num_steps,
                                           cfg.sampling.eta).to(accelerator.device)
    reward = reward_fn or load_reward(cfg.reward, accelerator.device)
    prompts = training_prompts(cfg)
    optimizer = torch.optim.AdamW(comps.trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    lr_sched = warmup_constant_lr(optimizer, cfg.optim.warmup_steps)
    unet, optimizer, lr_sched = accelerator.prepare(comps.unet, optimizer, lr_sched)
    comps.unet = unet
    policy = DiffusionPolicy(unet, schedule, cfg.sampling.guidance_scale, comps.reference_unet)
    height, width = pipeline_image_size(comps.pipe, cfg.sampling.height, cfg.sampling.width)
    factor = comps.pipe.vae_scale_factor
    run = Run(cfg, out, accelerator, comps, schedule, policy, reward, prompts, optimizer, lr_sched,
              (comps.pipe.unet.config.in_channels, height // factor, width // factor), (height, width))
    state = latest_checkpoint(out) if cfg.resume else None
    if state is not None:
        run.restore(state)
    return run, state
