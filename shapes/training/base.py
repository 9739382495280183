"""Train the shapes-world base models (tokenizer, tiny CLIP, VAE, UNet) and evaluate them
(``make base``, :mod:`pipelines.base`).

Writes under ``out_dir`` (default ``runs/base/``):

- ``shapes-clip/``: a ``CLIPModel`` folder (+ tokenizer, image processor), ``metrics.json``
  (zero-shot retrieval), ``config.yaml``, ``README.md`` model card;
- ``shapes-sd/``: a ``StableDiffusionPipeline`` folder, ``metrics.json`` (oracle alignment on the
  train and held-out prompts, subsets, VAE reconstruction), ``config.yaml``, ``grids/*.png``,
  ``README.md`` model card.

Stages run in order (``stages=[clip,vae,unet,eval]``); a stage left out reuses what an earlier run
left in ``out_dir``.  An existing output folder is never replaced unless ``overwrite=true``; the
committed checkpoints are rebuilt with ``out_dir=shapes/models overwrite=true``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from core.config import save_config, to_dict
from core.errors import UserError
from core.jsonable import json_safe
from core.loading import load_clip, load_sd_pipeline
from shapes.evaluate import EvalConfig, RetrievalConfig, clip_retrieval, evaluate_model
from shapes.training.cards import write_clip_card, write_sd_card
from shapes.training.clip import CLIPTrainConfig, train_clip
from shapes.training.diffusion import DiffusionConfig, train_diffusion
from shapes.training.vae import VAEConfig, reconstruction_accuracy, train_vae

Stage = Literal["clip", "vae", "unet", "eval"]


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
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


@dataclass
class BaseResult:
    clip_dir: Path
    sd_dir: Path
    clip_metrics: dict | None
    sd_metrics: dict | None
    seconds_by_stage: dict[str, float]


def _fresh(path: Path, overwrite: bool) -> None:
    """Make ``path`` an empty folder; refuse to replace an existing one without ``overwrite``."""
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"{path} already holds a model; this run would replace it.",
                            "pass another out_dir=..., or overwrite=true to replace it.")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def _need(path: Path, stage: str) -> None:
    if not path.exists():
        raise UserError(f"{path} is missing: the '{stage}' stage has not run in this out_dir.",
                        f"add {stage} to stages=[...] or point out_dir at a complete run.")


def train_base(cfg: BaseConfig) -> BaseResult:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    clip_dir, sd_dir = out / "shapes-clip", out / "shapes-sd"
    vae_dir = sd_dir / "vae"
    # Check every precondition before any stage writes anything.
    for stage, path in (("clip", clip_dir), ("vae", sd_dir), ("unet", sd_dir / "unet")):
        if stage in cfg.stages and path.exists() and any(path.iterdir()) and not cfg.overwrite:
            if not (stage == "unet" and "vae" in cfg.stages):
                raise UserError(f"{path} already holds a model; this run would replace it.",
                                "pass another out_dir=..., or overwrite=true to replace it.")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    meta_path = out / "timings.json"
    if meta_path.exists():
        seconds.update(json.loads(meta_path.read_text()))

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
        _need(vae_dir, "vae")
        if cfg.diffusion.text_init == "clip":
            _need(clip_dir, "clip")
        res = train_diffusion(cfg.diffusion, vae_dir, sd_dir, clip_dir=clip_dir, progress=cfg.progress)
        print(f"unet: {res.n_params_unet / 1e6:.2f} M params (+ text {res.n_params_text / 1e3:.0f} k), "
              f"{res.steps} steps, loss {res.final_loss:.4f}", flush=True)
        seconds["unet"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(seconds))

    clip_metrics = sd_metrics = None
    if "eval" in cfg.stages:
        t0 = time.perf_counter()
        clip_metrics, sd_metrics = evaluate_base(cfg, clip_dir, sd_dir)
        seconds["eval"] = time.perf_counter() - t0
        seconds["total_this_run"] = time.perf_counter() - t_all
        train_s = sum(seconds.get(s, 0.0) for s in ("clip", "vae", "unet"))
        for d, m in ((clip_dir, clip_metrics), (sd_dir, sd_metrics)):
            m["seconds_by_stage"] = {k: round(v, 1) for k, v in seconds.items()}
            m["training_minutes"] = round(train_s / 60, 1)
            m["threads"] = cfg.threads
            # Strict JSON (NaN -> null: a category with no prompts in a set) so any parser opens it.
            (d / "metrics.json").write_text(json.dumps(json_safe(m, digits=4), indent=2, default=str))
            save_config(cfg, d / "config.yaml")
        write_clip_card(clip_dir, clip_metrics, cfg)
        write_sd_card(sd_dir, sd_metrics, cfg)
    meta_path.write_text(json.dumps(seconds))
    return BaseResult(clip_dir, sd_dir, clip_metrics, sd_metrics, seconds)


def evaluate_base(cfg: BaseConfig, clip_dir: Path, sd_dir: Path) -> tuple[dict, dict]:
    from diffusers import AutoencoderKL

    _need(clip_dir / "config.json", "clip")
    _need(sd_dir / "model_index.json", "unet")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = load_clip(clip_dir, device=device)
    retrieval = clip_retrieval(clip, cfg.retrieval)
    clip_metrics = {"retrieval": asdict(retrieval), "retrieval_config": to_dict(cfg.retrieval),
                    "n_params": sum(p.numel() for p in clip.model.parameters()),
                    "targets": {"retrieval_accuracy>=0.90": retrieval.accuracy >= 0.90}}
    print(f"clip retrieval accuracy {retrieval.accuracy:.3f} (clean {retrieval.clean_accuracy:.3f}, "
          f"degraded {retrieval.degraded_accuracy:.3f})", flush=True)

    pipe = load_sd_pipeline(sd_dir, device=device)
    ev = evaluate_model(pipe, cfg.eval, out_dir=sd_dir, progress=cfg.progress)
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae", local_files_only=True).to(device)
    sets = ev.to_dict()["sets"]
    common, rare, held = sets["common"]["overall"], sets["rare_counts"]["overall"], sets["heldout"]["overall"]
    sd_metrics = {
        **ev.to_dict(),
        "grids": {k: str(Path(v).relative_to(sd_dir)) for k, v in ev.grids.items()},
        "vae_reconstruction": reconstruction_accuracy(vae),
        "n_params": {"unet": sum(p.numel() for p in pipe.unet.parameters()),
                     "text_encoder": sum(p.numel() for p in pipe.text_encoder.parameters()),
                     "vae": sum(p.numel() for p in pipe.vae.parameters())},
        "targets": {"common_overall>=0.60": common >= 0.60, "rare_counts_overall<=0.40": rare <= 0.40,
                    "heldout_overall<=0.40": held <= 0.40},
    }
    print(f"sd overall alignment: common {common:.3f}, rare counts {rare:.3f}, held-out {held:.3f}",
          flush=True)
    return clip_metrics, sd_metrics
