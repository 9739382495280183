"""A saved reward model folder, read without loading any weights: where its files are, its head's
weights checked, and which CLIP folder it runs on (:mod:`reward.model` loads the model itself)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from core.errors import UserError
from core.loading import model_fingerprint
from reward.config import ModelConfig

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "head.safetensors"


def reward_clip_folder(directory: Path, cfg: dict | None = None, clip_path: str | os.PathLike | None = None,
                       check: bool = False) -> Path:
    """The CLIP folder of the reward model in ``directory`` (``cfg``: its reward_config.json, read
    when None): ``clip_path`` if given, else its ``clip/`` (trained backbone), else the path
    recorded at save time (relative to the folder first, then absolute).  ``check``: the folder's
    ``projection_dim`` must be the head's embedding size (config files only, no weights load)."""
    cfg = json.loads((directory / CONFIG_FILE).read_text()) if cfg is None else cfg
    path = _clip_folder(directory, cfg, clip_path)
    if check:
        try:
            dim = int(json.loads((path / "config.json").read_text())["projection_dim"])
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"could not read the projection size of the CLIP folder {path} ({e}).",
                            "point the reward at a CLIPModel folder (config.json with projection_dim).") from None
        want = int(cfg["head"]["embed_dim"])
        if dim != want:
            raise UserError(f"the reward model in {directory} was trained on {want}-dim CLIP embeddings, and "
                            f"the CLIP folder {path} gives {dim}-dim ones (another CLIP at that path?).",
                            "load it with the CLIP it was trained on, or retrain the reward on this one "
                            "(make reward ARGS=\"model.clip=<folder>\").")
    return path


def _clip_folder(directory: Path, cfg: dict, clip_path: str | os.PathLike | None) -> Path:
    if clip_path is not None:
        return Path(clip_path)
    if cfg.get("clip_subdir"):
        return directory / cfg["clip_subdir"]
    candidates = [directory / cfg["clip_path_relative"], Path(cfg["clip_path"])]
    path = next((c for c in candidates if (c / "config.json").is_file()), None)
    default_clip = Path(ModelConfig().clip)  # the configured default: the shipped CLIP
    if path is None and cfg.get("clip_fingerprint") == model_fingerprint(default_clip, config_only=True):
        # The shipped CLIP moved (data/models/ -> shapes/models/); a folder saved before records
        # the old place: the same weights, found by their fingerprint.
        path = default_clip
    if path is None:
        raise UserError(f"the CLIP folder this reward model was built on is gone: {cfg['clip_path']}.",
                        "restore it, or pass clip_path= (the same CLIP weights).")
    return path


def load_head_state(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The head weights of the reward model folder ``directory``.  A folder that is not one, an
    unreadable head file, or weights that are not finite (a training that diverged, a damaged copy:
    every reward would be NaN) is one error naming the folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise UserError(f"{directory} is not a reward model folder: it has no {CONFIG_FILE}.",
                        "pass a folder written by `make reward` (default runs/reward).")
    try:
        state = load_file(directory / HEAD_FILE)
    except (OSError, SafetensorError) as e:
        raise UserError(f"could not load {directory / HEAD_FILE}: {e}", "retrain or restore it.") from None
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise UserError(f"the reward model in {directory} has weights that are NaN or infinite ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}), so every reward it gives is meaningless.",
                        "retrain it with `make reward` (a lower train.lr if its loss diverged), or restore the folder.")
    return state
