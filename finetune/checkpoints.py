"""A fine-tuning run's output folder: preparing it (:func:`prepare_output_dir`), whether its
checkpoints may be resumed (:func:`check_resumable`), writing and reading checkpoints
(:func:`save_checkpoint`, :func:`latest_checkpoint`) and saving the result (:func:`save_result`:
weights, then metrics.json last)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import yaml

from core.config import load_config, save_config, to_dict
from core.errors import UserError
from core.families import pipeline_family
from core.files import sort_safetensors_metadata, write_text_atomic
from core.loading import LORA_WEIGHTS
from core.side import SIDE_DIR, save_side
from finetune.components import Components
from finetune.config import LENGTH_KEYS, FinetuneConfig, Method

RESULT_FILES = ("metrics.json", LORA_WEIGHTS, "model_index.json", SIDE_DIR)
RESUMABLE = ("checkpoints", "rwl_data.pt")  # what a run leaves to continue from


def prepare_output_dir(cfg: FinetuneConfig) -> Path:
    """Check the output folder, then prepare it and save the resolved config: every refusal
    (:func:`check_output_dir`) comes before anything there is deleted or replaced.  Starting over
    (``resume=false`` or ``overwrite=true``) drops what an earlier run left to resume from;
    ``overwrite=true`` also drops its result."""
    out = Path(cfg.out)
    check_output_dir(out, cfg)
    if not cfg.resume or cfg.overwrite:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        for name in RESUMABLE[1:]:
            (out / name).unlink(missing_ok=True)
    if cfg.overwrite:
        for f in RESULT_FILES:
            if (out / f).is_dir():
                shutil.rmtree(out / f)
            else:
                (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out


def check_output_dir(out: Path, cfg: FinetuneConfig) -> None:
    """Refuse, without touching anything, a folder that holds a model (:func:`model_in`) or is
    this run's model or init (always), one that holds a finished run or another stage's
    config.yaml (unless ``overwrite``), and one that holds a different run or checkpoints past
    this run's end (unless starting over with ``resume=false``)."""
    model = model_in(out)
    if model is not None:
        raise UserError(f"{out} holds a model ({model}), not a fine-tuning run, and a run would write into it.",
                        "choose another output_dir (e.g. runs/<name>); overwrite=true never applies to a "
                        "model's folder.")
    inputs = {"model.pipeline": cfg.model.pipeline, "init": cfg.init}
    for key, folder in inputs.items():
        if folder is not None and out.resolve() == Path(folder).resolve():
            raise UserError(f"output_dir {out} is this run's {key}, which the run reads.",
                            "choose another output_dir (e.g. runs/<name>).")
    if cfg.overwrite:
        return
    finished = [f for f in RESULT_FILES if (out / f).exists()]
    if finished:
        raise UserError(f"{out} already holds a finished run ({', '.join(finished)}).",
                        "choose another output_dir, or pass overwrite=true to replace it.")
    saved = out / "config.yaml"
    if saved.exists() and not _is_finetune_config(saved):
        raise UserError(f"{saved} is not the config of a fine-tuning run (another stage's folder?), and a run "
                        "would replace it.", "choose another output_dir, or pass overwrite=true to replace it.")
    if cfg.resume:
        check_resumable(out, cfg)
        done = _checkpoint_step(out)
        name, length = cfg.length
        if done is not None and done >= length:
            raise UserError(f"{out} holds a checkpoint at {done}, at or past {name}={length}.",
                            f"raise {name} above {done} to continue training, or pass resume=false to start over.")


MODEL_MARKERS = ("model_index.json", "config.json")  # a diffusers pipeline; a transformers or diffusers model
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.ckpt", "*.pth")


def model_in(out: Path) -> str | None:
    """The file that makes ``out`` a model's folder (a diffusers pipeline, a transformers or
    diffusers model, loose weights), None for any other folder.  A fine-tuning run's own folder
    (its config.yaml is a fine-tuning config) is not one, though a full run's result is a pipeline."""
    if not out.is_dir() or _is_finetune_config(out / "config.yaml"):
        return None
    found = [name for name in MODEL_MARKERS if (out / name).exists()]
    found += [p.name for g in WEIGHT_GLOBS for p in sorted(out.glob(g)) if p.name not in RESULT_FILES]
    return found[0] if found else None


def _is_finetune_config(path: Path) -> bool:
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return False
    return isinstance(saved, dict) and saved.get("method") in get_args(Method)


def _checkpoints(out: Path) -> list[Path]:
    """The checkpoint folders of ``out``, oldest first (``step-<n>``, n zero-padded)."""
    return sorted((out / "checkpoints").glob("step-*"))


def _checkpoint_step(out: Path) -> int | None:
    """The step (DPOK: round) of the newest checkpoint in ``out``, None without one."""
    ckpts = _checkpoints(out)
    return int(ckpts[-1].name.removeprefix("step-")) if ckpts else None


def check_resumable(out: Path, cfg: FinetuneConfig) -> None:
    """A checkpoint only continues the run that wrote it: same config except how long it runs.  So
    does a folder whose run stopped before its first checkpoint: its config.yaml is not replaced by
    another run's."""
    saved = out / "config.yaml"
    if not saved.exists():
        return
    free = {"resume", "overwrite", "output_dir", "compute"}  # compute: how, not what
    # through the loader, so keys added since that run began (at their defaults) compare equal
    try:
        saved_cfg = load_config(FinetuneConfig, saved)
    except UserError as e:  # e.g. a key renamed since that run began
        why = e.problem.rstrip(".")
        raise UserError(f"{out} holds a run whose saved config no longer loads ({why}), so its checkpoints "
                        "cannot be resumed.",
                        "pass resume=false to start over there, or use another output_dir.") from None
    old = {k: v for k, v in to_dict(saved_cfg).items() if k not in free}
    new = {k: v for k, v in to_dict(cfg).items() if k not in free}
    for tree in (old, new):
        for section, key in LENGTH_KEYS.items():
            tree.get(section, {}).pop(key, None)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise UserError(f"{out} holds a run with a different config (sections {changed}).",
                        "resume with the same config, pass resume=false to start over, or use another output_dir.")


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
        for old in _checkpoints(out)[:-2]:  # keep the newest two
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out: Path) -> dict | None:
    ckpts = _checkpoints(out)
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
    """LoRA weights loadable by ``pipeline.load_lora_weights(out)`` (a full pipeline folder; a side
    network, ``core.side.save_side``), then metrics.json last, so its presence marks a finished run."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unet = accelerator.unwrap_model(comps.unet)
    family = pipeline_family(comps.pipe)
    if cfg.model.parameterisation == "side":
        save_side(unet, out)
    elif cfg.model.parameterisation == "lora":
        import diffusers
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(unet)
        if not family.flow:  # a UNet's peft names in diffusers' (the transformers' are the same in both)
            layers = convert_state_dict_to_diffusers(layers)
        layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
        # The adapter's config (rank, lora_alpha, targets) goes into the file's metadata, so that
        # load_lora_weights (diffusers' and core.loading's) scales B A by lora_alpha / rank as
        # trained; without it diffusers takes alpha = rank, scale 1.  Its sets (peft's
        # target_modules) are sorted and the header's keys put in order, so the same weights are
        # the same bytes in every process (a run's fingerprint, and so its seeds, hash them).
        adapter = {k: sorted(v) if isinstance(v, (set, frozenset)) else v
                   for k, v in unet.peft_config["default"].to_dict().items()}
        # the family's pipeline class saves it as its own load_lora_weights reads it (unet.* or transformer.*)
        kind = family.denoiser
        getattr(diffusers, family.pipeline_class).save_lora_weights(
            save_directory=str(out), safe_serialization=True,
            **{f"{kind}_lora_layers": layers, f"{kind}_lora_adapter_metadata": adapter})
        sort_safetensors_metadata(out / LORA_WEIGHTS)
    else:
        setattr(comps.pipe, family.denoiser, unet)
        comps.pipe.save_pretrained(out)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
