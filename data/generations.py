"""Images of a dataset root and their rows in the *generations* table.

Every image a stage produces (``make generate``, shapes-world renders, evaluation samples) is saved
here: ``<root>/images/<image_id>.png``, written durably before its row is appended, so a row never
points at a missing or half-written file (``make import`` adds images made elsewhere the same way,
see :mod:`collect.imports`).  Reading goes through the table: callers pass a row, never a path; the path
in the row must stay inside the root, and the file must still be the row's image (pixel size and
sha256, :func:`check_image`).

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
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
from PIL import Image

from core.errors import DataError
from core.sampling import SamplerSettings
from data.schemas import GENERATIONS
from data.store import Store, fsync_dir, temp_path

IMAGES_DIR = "images"


@dataclass(frozen=True)
class PromptSpec:
    """A prompt as the generations table records it."""

    text: str
    prompt_id: str
    category: str


KnownPrompt = Callable[[str], Optional[PromptSpec]]
"""Recognises the prompts of a world with ids of its own (e.g. :func:`shapes.world.prompt_spec`):
their spec, or None for any other text."""


def prompt_spec(text: str, known: KnownPrompt | None = None) -> PromptSpec:
    """A prompt that ``known`` recognises keeps its own id and category (a shapes-world prompt, so
    targets, evaluation and the oracle recognise it); any other text gets ``p-`` + 12 hex digits of
    its sha1 and category ``other``."""
    spec = known(text) if known is not None else None
    if spec is not None:
        return spec
    return PromptSpec(text, "p-" + hashlib.sha1(text.encode()).hexdigest()[:12], "other")


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
    round: int = 0,
    model_fingerprint: str | None = None,
    run: str | None = None,
) -> list[dict]:
    """Write PNGs and append their generations rows (one append for the batch).  Returns the rows.

    ``model_key``: what the image ids hash for the model (default ``model_id``); pass a
    location-independent one (:func:`core.loading.model_fingerprint`) so that a copy of the model at
    another path, e.g. in another clone, names its images the same way.  ``round``,
    ``model_fingerprint`` and ``run``: the generations columns of the closed loop (data.schemas)."""
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
            write_image_file(store.root / rel, data)
        rows.append(dict(
            image_id=image_id, prompt_id=prompt_id, prompt=prompt, category=category,
            model_id=model_id, seed=int(seed), sampler=settings.sampler,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta,
            height=image.height, width=image.width, image_path=rel,
            sha256=sha, created_at=now, round=int(round), model_fingerprint=model_fingerprint, run=run,
        ))
    if rows:
        fsync_dir(directory)
        store.append(GENERATIONS, rows)
    return rows


def write_image_file(path: Path, data: bytes) -> None:
    """Write an image file so that it is either absent or complete: a temporary file
    (:func:`data.store.temp_path`, which no image loader takes for an image), fsynced, renamed into
    place (the caller fsyncs the folder once for a batch)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def image_file(root: str | os.PathLike, image_path: str) -> Path:
    """The file of a generations row, refusing any path that leaves the dataset root."""
    root = Path(root).resolve()
    path = (root / image_path).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"image path '{image_path}' points outside the dataset root {root}.",
                        "image paths in the generations table are relative to the root.")
    return path


# ---------------------------------------------------------------------------------------------
# Rows and files agree: every stage that reads a round image goes through check_image (or
# image_bytes / load_image, which use it), so a file replaced or edited after its row was written
# is one clear error naming the image, never silently trained on, scored or shown.


@dataclass(frozen=True)
class ImageFacts:
    """What an image file holds: the sha256 of its bytes and its size in pixels."""

    sha256: str
    width: int
    height: int


# (path, device, inode, bytes, mtime in ns) -> facts.  The sha256 is computed once per version of
# a file per process: a later check of an unchanged file costs an open and an fstat (the labeling
# app checks an image every time it serves it).  Bounded; the oldest entries go first.
_FACTS: OrderedDict[tuple, ImageFacts] = OrderedDict()
_FACTS_MAX = 200_000
_FACTS_LOCK = threading.Lock()


def image_facts(data: bytes) -> ImageFacts:
    """The sha256 and pixel size of encoded image bytes (the header is parsed, not the pixels).
    Raises OSError (PIL's UnidentifiedImageError) if the bytes are no image PIL can open."""
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    return ImageFacts(hashlib.sha256(data).hexdigest(), int(width), int(height))


def _checked(root: str | os.PathLike, row: dict | pd.Series, want_bytes: bool) -> tuple[Path, bytes | None]:
    """The one check of a round image against its generations row (size, then sha256).

    Returns the file's path and, with ``want_bytes``, its bytes (read once: the bytes checked are
    the bytes returned)."""
    image_id = row["image_id"] if "image_id" in row else getattr(row, "name", "?")  # a Series indexed by id
    path = image_file(root, row["image_path"])
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with _FACTS_LOCK:
                facts = _FACTS.get(key)
            data = f.read() if want_bytes or facts is None else None
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"image {image_id} is missing: {path}.",
                        "restore the images folder of this dataset root, or regenerate it.") from None
    if facts is None:
        try:
            facts = image_facts(data)
        except OSError as e:
            raise DataError(f"image {image_id} at {path} is not a readable image ({e}).",
                            "restore or regenerate it.") from None
        with _FACTS_LOCK:
            _FACTS[key] = facts
            while len(_FACTS) > _FACTS_MAX:
                _FACTS.popitem(last=False)
    want_w, want_h = int(row["width"]), int(row["height"])
    if (facts.width, facts.height) != (want_w, want_h):
        raise DataError(
            f"image {image_id} ({path}) is {facts.width}x{facts.height} pixels but its generations row "
            f"says {want_w}x{want_h}.",
            "the file was replaced or edited after its row was written: restore the original file, or "
            "bring the new one in as a new image with make import.")
    if facts.sha256 != row["sha256"]:
        raise DataError(
            f"image {image_id} ({path}) does not match its generations row: its sha256 is "
            f"{facts.sha256[:16]}..., the row says {str(row['sha256'])[:16]}....",
            "the file was replaced or edited after its row was written: restore the original file, or "
            "bring the new one in as a new image with make import.")
    return path, data


def check_image(root: str | os.PathLike, row: dict | pd.Series) -> Path:
    """The file of one generations row, checked against the row (pixel size and sha256); raises
    DataError naming the image when the file is missing, unreadable or not the row's image."""
    return _checked(root, row, want_bytes=False)[0]


def image_bytes(root: str | os.PathLike, row: dict | pd.Series) -> bytes:
    """The encoded bytes of one generations row's image, checked as :func:`check_image` does."""
    return _checked(root, row, want_bytes=True)[1]


def load_image(root: str | os.PathLike, row: dict | pd.Series) -> Image.Image:
    """The RGB image of one generations row, checked as :func:`check_image` does."""
    data = image_bytes(root, row)
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except OSError as e:  # a header that parses over a truncated body
        raise DataError(f"image {row.get('image_id', getattr(row, 'name', '?'))} at "
                        f"{image_file(root, row['image_path'])} is not a "
                        f"readable image ({e}).", "restore or regenerate it.") from None
