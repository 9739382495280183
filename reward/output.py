"""A trained reward model's folder: refusing to replace one (:func:`check_out_dir`) and writing it
atomically (:func:`write_model_folder`: model, ``config.yaml``, ``metrics.json``)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from core.config import save_config
from core.errors import UserError
from reward.config import RewardConfig
from reward.model import CONFIG_FILE, METRICS_FILE, TRAIN_CONFIG_FILE, RewardModel


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        what = "a trained reward model" if (out / CONFIG_FILE).is_file() else "files"
        raise UserError(f"{out} already holds {what}; it is kept.",
                        "pass overwrite=true to replace it, or out_dir=<another folder>.")


def write_model_folder(model: RewardModel, cfg: RewardConfig, metrics: dict, out: Path) -> Path:
    """Write the folder next to ``out`` and move it into place only when complete; an existing
    folder (overwrite=true) is replaced at that moment, never before."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, name=out.name)
        metrics["model_id"] = model.model_id
        save_config(cfg, tmp / TRAIN_CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if out.exists():
            check_out_dir(out, cfg.overwrite)  # still allowed (someone may have written meanwhile)
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
