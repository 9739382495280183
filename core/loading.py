"""Load models from local folders in the standard formats, and nothing else.

One way in for every stage: a diffusers ``StableDiffusionPipeline`` folder (the shapes-world model
or a user's Stable Diffusion v1.5) and a transformers ``CLIPModel`` folder (the shapes-world CLIP or
a user's CLIP ViT-L/14).  ``local_files_only=True`` everywhere: a path that is not a model folder is
a clear error, never a download.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.errors import UserError

if TYPE_CHECKING:
    from transformers import CLIPModel

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_folder(path: Path, marker: str, what: str) -> None:
    if not path.is_dir():
        raise UserError(f"{what} folder {path} does not exist.",
                        f"pass the local folder of a {what} (it must contain {marker}).")
    if not (path / marker).is_file():
        raise UserError(f"{path} is not a {what} folder: it has no {marker}.",
                        f"pass a folder saved with save_pretrained (containing {marker}).")


def pipeline_geometry(path: str | os.PathLike) -> tuple[int | list[int], int]:
    """(UNet sample_size in latent pixels, VAE scale factor) of a StableDiffusionPipeline folder,
    read from its config files without loading weights (to check a requested image size before
    anything runs; ``core.sampling.image_size``)."""
    path = Path(path)
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return unet["sample_size"], 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"could not read the UNet and VAE configs of {path}: {e}",
                        "check that the folder is complete (unet/config.json, vae/config.json).") from None


def model_fingerprint(path: str | os.PathLike, *, config_only: bool = False) -> str:
    """A location-independent identity of a model folder (16 hex digits), the one fingerprint every
    stage uses.

    By default (what image ids hash, :func:`data.generations.save_images`): every JSON file's
    relative path and bytes, and every weight file's relative path, size and the SHA-256 of its
    first and last MiB (hashing whole multi-GB checkpoints at every run would be slow).  Copies of
    one model at two paths agree; checkpoints of one architecture differ in their weights' bytes.

    ``config_only``: the cheaper identity a reward model records for its CLIP folder
    (``reward_config.json``'s ``clip_fingerprint``, and part of a backbone-trained reward model's
    id): the bytes of ``config.json`` and the names and sizes of the folder's top-level weight
    files.  Saved reward folders carry these values, so they are computed exactly as before."""
    root = Path(path)
    if config_only:
        h = hashlib.sha256((root / "config.json").read_bytes())
        for f in sorted(root.iterdir()):
            if f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
        return h.hexdigest()[:16]
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if f.suffix == ".json":
            h.update(f"{rel}\0".encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".ckpt"):
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, size - (1 << 20)))
                tail = fh.read()
            h.update(f"{rel}\0{size}\0".encode() + hashlib.sha256(head + tail).digest())
    return h.hexdigest()[:16]


def load_sd_pipeline(path: str | os.PathLike, *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None):
    """A ``StableDiffusionPipeline`` from a local folder, moved to ``device`` (default: CUDA if
    available).  The safety checker is not loaded (research use; saves memory)."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    check_folder(path, "model_index.json", "Stable Diffusion pipeline")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            path, local_files_only=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"could not load the Stable Diffusion pipeline in {path}: {e}",
                        "check that the folder is complete (unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/, model_index.json).") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or default_device())


@dataclass
class LoadedCLIP:
    model: CLIPModel
    tokenizer: object
    image_processor: object
    path: Path


def load_clip(path: str | os.PathLike, *, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> LoadedCLIP:
    """A ``CLIPModel`` with its tokenizer and image processor from a local folder."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    path = Path(path)
    check_folder(path, "config.json", "CLIP model")
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"could not load the CLIP model in {path}: {e}",
                        "pass a folder saved with CLIPModel.save_pretrained plus its tokenizer and "
                        "image processor (preprocessor_config.json).") from None
    model.eval().to(device or default_device())
    return LoadedCLIP(model, tokenizer, processor, path)
