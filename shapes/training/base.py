"""Train the shapes-world base models (tokenizer, tiny CLIP, VAE, UNet) for ``make base``
(:mod:`pipelines.base`), and the settings of their evaluation.

Writes under ``out_dir`` (default ``runs/base/``):

- ``shapes-clip/``: a ``CLIPModel`` folder (+ tokenizer, image processor);
- ``shapes-sd/``: a ``StableDiffusionPipeline`` folder;
- ``shapes-flow/``: a ``StableDiffusion3Pipeline`` folder (the ``flow`` stage, :mod:`shapes.training.flow`:
  a flow-matching transformer on shapes-sd's VAE; not in the default stages);
- ``timings.json``: seconds per training stage, read back by later runs into the same folder.

Stages run in order (``stages=[clip,vae,unet,flow,eval]``; the default leaves out ``flow``); a stage
left out reuses what an earlier run left in ``out_dir``.  An existing output folder is never replaced unless ``overwrite=true``; the
committed checkpoints are rebuilt with ``out_dir=shapes/models overwrite=true``.  The ``eval``
stage (metrics.json, config.yaml, grids and the README.md model cards) is
:func:`evaluation.base_model.evaluate_base`, which :mod:`pipelines.base` calls after
:func:`train_base`: evaluation sits above the shapes world, so this module only holds its settings
(:class:`BaseEvalConfig`, :class:`RetrievalConfig`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from core.errors import UserError
from core.sampling import SamplingConfig
from shapes.training.clip import CLIPTrainConfig, train_clip
from shapes.training.diffusion import DiffusionConfig, train_diffusion
from shapes.training.flow import FlowConfig, train_flow
from shapes.training.vae import VAEConfig, train_vae

Stage = Literal["clip", "vae", "unet", "flow", "eval"]
TRAINING_STAGES: tuple[Stage, ...] = ("clip", "vae", "unet", "flow")


@dataclass(frozen=True)
class BaseEvalConfig:
    """The text-to-image model's card evaluation (:func:`evaluation.base_model.evaluate_model`)."""

    samples_per_prompt: int = 4  # K
    # Image i of each split's list (K consecutive images per prompt) gets seed 2**32 + seed * 10**6 + i
    # (core.seeds.eval_seeds), as in `make eval`: the held-out figure is make eval's base figure
    # on split=heldout with the same K, seed and sampling.
    seed: int = 1234
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    splits: tuple[str, ...] = ("train", "heldout")
    grid_prompts: int = 8  # rows (prompts) per category grid; columns are the K samples


@dataclass(frozen=True)
class RetrievalConfig:
    """The CLIP's card evaluation (:func:`evaluation.base_model.clip_retrieval`)."""

    per_prompt: int = 4  # renders per prompt (each prompt of ``split``)
    split: str = "all"
    seed: int = 10_000_000  # render seeds seed + i: disjoint from the training pools' seeds
    blur_sigma: float = 1.0  # the degraded copy of each render (px at 64 px)
    noise_sigma: float = 10.0
    batch_size: int = 256


@dataclass(frozen=True)
class BaseConfig:
    out_dir: str = "runs/base"
    stages: tuple[Stage, ...] = ("clip", "vae", "unet", "eval")
    overwrite: bool = False  # replace existing output folders of the stages that run
    threads: int = 2  # torch CPU threads
    progress: bool = True
    clip: CLIPTrainConfig = field(default_factory=CLIPTrainConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    eval: BaseEvalConfig = field(default_factory=BaseEvalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


@dataclass
class BaseResult:
    clip_dir: Path
    sd_dir: Path
    flow_dir: Path
    seconds_by_stage: dict[str, float]  # every training stage timed in out_dir, this run's and earlier ones'
    seconds_this_run: float


def _fresh(path: Path, overwrite: bool) -> None:
    """Make ``path`` an empty folder; refuse to replace an existing one without ``overwrite``."""
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"{path} already holds a model; this run would replace it.",
                            "pass another out_dir=..., or overwrite=true to replace it.")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def need_stage_output(path: Path, stage: str) -> None:
    if not path.exists():
        raise UserError(f"{path} is missing: the '{stage}' stage has not run in this out_dir.",
                        f"add {stage} to stages=[...] or point out_dir at a complete run.")


def train_base(cfg: BaseConfig) -> BaseResult:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    clip_dir, sd_dir, flow_dir = out / "shapes-clip", out / "shapes-sd", out / "shapes-flow"
    vae_dir = sd_dir / "vae"
    # Check every precondition before any stage writes anything.
    for stage, path in (("clip", clip_dir), ("vae", sd_dir), ("unet", sd_dir / "unet"), ("flow", flow_dir)):
        if stage in cfg.stages and path.exists() and any(path.iterdir()) and not cfg.overwrite:
            if not (stage == "unet" and "vae" in cfg.stages):
                raise UserError(f"{path} already holds a model; this run would replace it.",
                                "pass another out_dir=..., or overwrite=true to replace it.")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    meta_path = out / "timings.json"
    if meta_path.exists():  # earlier runs' training stages (older files also hold eval times)
        seconds.update({k: v for k, v in json.loads(meta_path.read_text()).items() if k in TRAINING_STAGES})

    if "clip" in cfg.stages:
        t0 = time.perf_counter()
        _fresh(clip_dir, cfg.overwrite)
        res = train_clip(cfg.clip, clip_dir, progress=cfg.progress)
        print(f"clip: {res.n_params / 1e6:.2f} M params, {res.steps} steps, loss {res.final_loss:.3f}",
              flush=True)
        seconds["clip"] = time.perf_counter() - t0
    if "vae" in cfg.stages:
        t0 = time.perf_counter()
        _fresh(sd_dir, cfg.overwrite)
        res = train_vae(cfg.vae, vae_dir, progress=cfg.progress)
        print(f"vae: {res.n_params / 1e6:.2f} M params, mse {res.final_mse:.4f}, "
              f"scaling_factor {res.scaling_factor:.4f}", flush=True)
        seconds["vae"] = time.perf_counter() - t0
    if "unet" in cfg.stages:
        t0 = time.perf_counter()
        need_stage_output(vae_dir, "vae")
        if cfg.diffusion.text_init == "clip":
            need_stage_output(clip_dir, "clip")
        res = train_diffusion(cfg.diffusion, vae_dir, sd_dir, clip_dir=clip_dir, progress=cfg.progress)
        print(f"unet: {res.n_params_unet / 1e6:.2f} M params (+ text {res.n_params_text / 1e3:.0f} k), "
              f"{res.steps} steps, loss {res.final_loss:.4f}", flush=True)
        seconds["unet"] = time.perf_counter() - t0
    if "flow" in cfg.stages:
        t0 = time.perf_counter()
        need_stage_output(vae_dir, "vae")
        _fresh(flow_dir, cfg.overwrite)
        res = train_flow(cfg.flow, vae_dir, flow_dir, progress=cfg.progress)
        print(f"flow: {res.n_params_transformer / 1e6:.2f} M params (+ text {res.n_params_text / 1e3:.0f} k), "
              f"{res.steps} steps, loss {res.final_loss:.4f}", flush=True)
        seconds["flow"] = time.perf_counter() - t0
    if any(s in cfg.stages for s in TRAINING_STAGES):  # an eval-only run leaves out_dir as it was
        meta_path.write_text(json.dumps(seconds))
    return BaseResult(clip_dir, sd_dir, flow_dir, seconds, time.perf_counter() - t_all)
