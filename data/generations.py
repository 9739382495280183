"""Images of a dataset root and their rows in the *generations* table.

Every image a stage produces (``make generate``, shapes-world renders, evaluation samples) is saved
here: ``<root>/images/<image_id>.png``, written durably before its row is appended, so a row never
points at a missing or half-written file.  Reading goes through the table: callers pass an
``image_id``, never a path, and the path in the row must stay inside the root.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
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
) -> list[dict]:
    """Write PNGs and append their generations rows (one append for the batch).  Returns the rows."""
    n = len(images)
    if not all(len(x) == n for x in (prompts, prompt_ids, categories, seeds)):
        raise ValueError("images, prompts, prompt_ids, categories and seeds must have equal length")
    directory = store.root / IMAGES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    rows = []
    for image, prompt, prompt_id, category, seed in zip(images, prompts, prompt_ids, categories, seeds):
        image_id = uuid.uuid4().hex
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
        rel = f"{IMAGES_DIR}/{image_id}.png"
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
            sha256=hashlib.sha256(data).hexdigest(), created_at=now,
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
