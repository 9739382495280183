"""Images of a dataset root and their rows in the *generations* table.

Every image a stage produces (``make generate``, shapes-world renders, evaluation samples) is saved
here: ``<root>/images/<image_id>.png``, written durably before its row is appended, so a row never
points at a missing or half-written file.  Reading goes through the table: callers pass an
``image_id``, never a path, and the path in the row must stay inside the root.

Image ids are content addresses, not random: a hash of the model (its fingerprint, not its path),
prompt, seed, sampler settings and the PNG bytes.  So a rerun with the same seed on the same machine,
in this clone or another, names its images the same way (and every stage that orders images by id
orders them the same way: ``make demo`` reruns match), while two different images can never share an
id, so saving never replaces an existing image with another one.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from PIL import Image

from data.errors import DataError
from data.schemas import GENERATIONS
from data.store import Store, fsync_dir

IMAGES_DIR = "images"


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str
    num_inference_steps: int
    guidance_scale: float
    eta: float


RENDERER = SamplerSettings(sampler="shapes-renderer", num_inference_steps=1, guidance_scale=0.0, eta=0.0)


def content_id(model_id: str, prompt_id: str, prompt: str, seed: int, settings: SamplerSettings,
               sha256: str) -> str:
    """The image id: 32 hex digits of a hash over what made the image and the image's own bytes."""
    key = "\x1f".join([model_id, prompt_id, prompt, str(seed), settings.sampler,
                       str(settings.num_inference_steps), repr(float(settings.guidance_scale)),
                       repr(float(settings.eta)), sha256])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def save_images(
    store: Store,
    images: list[Image.Image],
    *,
    prompts: list[str],
    prompt_ids: list[str],
    categories: list[str],
    seeds: list[int],
    model_id: str,
    settings: SamplerSettings,
    model_key: str | None = None,
) -> list[dict]:
    """Write PNGs and append their generations rows (one append for the batch).  Returns the rows.

    ``model_key``: what the image ids hash for the model (default ``model_id``); pass a
    location-independent one (:func:`data.loading.model_fingerprint`) so that a copy of the model at
    another path, e.g. in another clone, names its images the same way."""
    n = len(images)
    if not all(len(x) == n for x in (prompts, prompt_ids, categories, seeds)):
        raise ValueError("images, prompts, prompt_ids, categories and seeds must have equal length")
    directory = store.root / IMAGES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    rows, seen = [], set()
    for image, prompt, prompt_id, category, seed in zip(images, prompts, prompt_ids, categories, seeds):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        image_id = content_id(model_key or model_id, prompt_id, prompt, int(seed), settings, sha)
        if image_id in seen:  # the same image twice in one batch is one item
            continue
        seen.add(image_id)
        rel = f"{IMAGES_DIR}/{image_id}.png"
        # Same id means same bytes, so an existing file is already this image: leave it as it is.
        if not (store.root / rel).exists():
            tmp = directory / f"_tmp-{image_id}.png"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, store.root / rel)
        rows.append(dict(
            image_id=image_id, prompt_id=prompt_id, prompt=prompt, category=category,
            model_id=model_id, seed=int(seed), sampler=settings.sampler,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta,
            height=image.height, width=image.width, image_path=rel,
            sha256=sha, created_at=now,
        ))
    if rows:
        fsync_dir(directory)
        store.append(GENERATIONS, rows)
    return rows


def image_file(root: str | os.PathLike, image_path: str) -> Path:
    """The file of a generations row, refusing any path that leaves the dataset root."""
    root = Path(root).resolve()
    path = (root / image_path).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"image path '{image_path}' points outside the dataset root {root}.",
                        "image paths in the generations table are relative to the root.")
    return path


def load_image(root: str | os.PathLike, row: dict | pd.Series, verify: bool = False) -> Image.Image:
    """The RGB image of one generations row (``verify`` also checks its sha256)."""
    path = image_file(root, row["image_path"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {row['image_id']} is missing: {path}.",
                        "restore the images folder of this dataset root, or regenerate it.") from None
    if verify and hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise DataError(f"image {row['image_id']} at {path} does not match its sha256.",
                        "the file was changed after it was generated; restore or regenerate it.")
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except OSError as e:
        raise DataError(f"image {row['image_id']} at {path} is not a readable image ({e}).",
                        "restore or regenerate it.") from None
