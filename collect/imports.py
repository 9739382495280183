"""Images made elsewhere (another model, an API, an old experiment) brought into a round.

``import_images(ImportConfig(src=..., root=...))`` (``make import``) reads either

- a folder in the Hugging Face ``imagefolder`` convention: images plus a ``metadata.jsonl``,
  ``metadata.csv`` or ``metadata.parquet`` with a ``file_name`` column (relative to the folder)
  and a ``prompt`` column; or
- a listing file (``.csv``, ``.jsonl`` or ``.parquet``) with a column of image paths (relative to
  the listing's folder, or absolute) and a column of prompts.

Optional columns ``model_id``, ``seed``, ``sampler``, ``num_inference_steps``, ``guidance_scale``
and ``eta`` fill those columns of the generations rows; every other column is kept, as a JSON
object per image, in the round's ``imports`` table (with the source file and row).

Each image becomes a generations row like one ``make generate`` writes: the file is copied byte for
byte (PNG, JPEG and WebP; other formats PIL reads are stored as PNG) to
``<root>/images/<image_id>.<ext>``, with its sha256 and size, under a content-addressed id (the
same hash :func:`data.generations.content_id` gives generated images).  So importing the same
source again adds nothing, and nothing already in the round is ever replaced.

Every row is checked before anything is written: a missing file, an unreadable image, an empty
prompt or a seed that is not an integer is one :class:`UserError` naming the row, and the round is
left as it was.  Images are written first (temp file, rename), then the ``imports`` rows, then the
``generations`` rows in one append; a failure on the way removes the files this import created.
A process killed part-way can leave image files (or ``imports`` rows) that no generations row
points at, never a generations row without its file; a re-import completes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from core.config import NonNegativeInt
from core.errors import UserError
from data.conform import from_rows
from data.generations import IMAGES_DIR, KnownPrompt, SamplerSettings, content_id, prompt_spec, write_image_file
from data.schemas import GENERATIONS, IMPORTS
from data.store import Store, fsync_dir

METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
LISTING_SUFFIXES = (".jsonl", ".csv", ".parquet")
IMAGE_COLUMNS = ("file_name", "image_path", "image", "path")
PROMPT_COLUMNS = ("prompt", "caption", "text")
# Source columns that fill generations columns instead of landing in `extra`.
SETTING_COLUMNS = ("model_id", "seed", "sampler", "num_inference_steps", "guidance_scale", "eta")
# Encodings a browser shows and PIL reads, kept byte for byte; anything else is stored as PNG.
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
UNKNOWN_SEED = -1
"""The seed of an image whose source gives none."""
IMPORTED = SamplerSettings(sampler="imported", num_inference_steps=1, guidance_scale=0.0, eta=0.0)
"""Sampler columns of an image whose source does not give them (steps must be > 0 in the table)."""


@dataclass(frozen=True)
class ImportConfig:
    src: str = ""
    """A folder with metadata.jsonl|csv|parquet, or a .csv/.jsonl/.parquet listing."""
    root: str = "datasets/shapes"
    """The round (dataset root) to import into; created if absent."""
    model_id: str = "imported"
    """The model_id of rows whose source has no model_id column (or an empty one)."""
    image_column: Optional[str] = None
    """The column of image paths; default the first of file_name, image_path, image, path."""
    prompt_column: Optional[str] = None
    """The column of prompts; default the first of prompt, caption, text."""
    round: NonNegativeInt = 0
    """The labeling round the images go to (generations.round; data.rounds)."""


@dataclass(frozen=True)
class ImportResult:
    root: str
    source: str
    rows: int
    images_added: int
    already_in_round: int  # rows whose image the round (or an earlier row of the source) already has
    converted_to_png: int
    images_in_round: int


@dataclass(frozen=True)
class _Prepared:
    """One checked source row: its generations row (less created_at) and its imports row."""

    generation: dict
    imported: dict
    file: Path
    converted: bool


# ---------------------------------------------------------------------------------------------
# Reading the source


def _source_file(src: Path) -> Path:
    if src.is_dir():
        found = [src / n for n in METADATA_FILES if (src / n).is_file()]
        if not found:
            raise UserError(f"{src} has no {' / '.join(METADATA_FILES)}.",
                            "add a metadata file with file_name and prompt columns (the Hugging Face "
                            "imagefolder convention), or pass a .csv/.jsonl/.parquet listing as src.")
        if len(found) > 1:
            raise UserError(f"{src} has more than one metadata file: {[p.name for p in found]}.",
                            "keep one of them.")
        return found[0]
    if not src.is_file():
        raise UserError(f"import source {src} does not exist.",
                        "pass src=<folder with metadata.jsonl or metadata.csv> or src=<listing file>.")
    if src.suffix.lower() not in LISTING_SUFFIXES:
        raise UserError(f"import source {src} is not a folder or a {' / '.join(LISTING_SUFFIXES)} file.",
                        "pass a folder with a metadata file, or a CSV, JSONL or Parquet listing.")
    return src


def _read_source(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The columns and the rows (1-based data row, {column: value}) of a metadata or listing file.
    Absent values (JSON null, an empty CSV cell, a Parquet null or NaN) are left out of the row's dict."""
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix == ".jsonl":
        columns: dict[str, None] = {}
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {line_no} is not JSON ({e.msg}).",
                                    "write one JSON object per line.") from None
                if not isinstance(value, dict):
                    raise UserError(f"{path} line {line_no} is not a JSON object.",
                                    'write one object per line, e.g. {"file_name": "a.png", "prompt": "..."}.')
                columns.update(dict.fromkeys(value))
                rows.append((len(rows) + 1, {k: v for k, v in value.items() if v is not None}))
        return list(columns), rows
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for n, row in enumerate(reader, 1):
                if None in row:
                    raise UserError(f"{path} row {n} has more cells than the header has columns.",
                                    "quote values that hold commas.")
                rows.append((n, {k: v for k, v in row.items() if v not in ("", None)}))
            return list(reader.fieldnames or []), rows
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path} is not a readable Parquet file ({e}).", "pass a valid Parquet file.") from None
    rows = [(n, {k: v for k, v in row.items() if not _absent(v)}) for n, row in enumerate(table.to_pylist(), 1)]
    return table.column_names, rows


def _absent(value) -> bool:
    """None, or the NaN pandas writes for a missing number."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _columns(path: Path, columns: list[str], cfg: ImportConfig) -> tuple[str, str]:
    def pick(given: str | None, candidates: tuple[str, ...], what: str) -> str:
        if given is not None:
            if given not in columns:
                raise UserError(f"{path} has no column {given!r} (it has {columns}).",
                                f"set {what}_column to one of its columns.")
            return given
        for c in candidates:
            if c in columns:
                return c
        raise UserError(f"{path} has none of the columns {list(candidates)} for the {what} "
                        f"(it has {columns}).",
                        f"name the column {candidates[0]}, or set {what}_column=<its name>.")

    return pick(cfg.image_column, IMAGE_COLUMNS, "image"), pick(cfg.prompt_column, PROMPT_COLUMNS, "prompt")


# ---------------------------------------------------------------------------------------------
# Checking one row


def _int(value, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{where}: {what} is {value!r}, not an integer.", f"give {what} as a whole number.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise UserError(f"{where}: {what} is {value!r}, not an integer.", f"give {what} as a whole number.")


def _float(value, what: str, where: str) -> float:
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise UserError(f"{where}: {what} is {value!r}, not a finite number.", f"give {what} as a number.")
    return out


def _settings(row: dict, where: str) -> SamplerSettings:
    if not any(c in row for c in ("sampler", "num_inference_steps", "guidance_scale", "eta")):
        return IMPORTED
    steps = _int(row.get("num_inference_steps", IMPORTED.num_inference_steps), "num_inference_steps", where)
    if steps <= 0:
        raise UserError(f"{where}: num_inference_steps is {steps}.", "give a positive number of steps.")
    return SamplerSettings(
        sampler=str(row.get("sampler", IMPORTED.sampler)).strip() or IMPORTED.sampler,
        num_inference_steps=steps,
        guidance_scale=_float(row.get("guidance_scale", IMPORTED.guidance_scale), "guidance_scale", where),
        eta=_float(row.get("eta", IMPORTED.eta), "eta", where),
    )


def _encoded(file: Path, where: str) -> tuple[bytes, int, int, str, bool]:
    """(bytes as stored, width, height, file extension, converted?) of an image file.  Every pixel is decoded,
    so a truncated file is caught here and not when a stage reads it; formats outside
    KEPT_FORMATS are re-encoded as PNG (deterministically: a re-import gives the same bytes)."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{where}: image file {file} does not exist.",
                        "fix the path (relative paths are relative to the metadata/listing file's folder) "
                        "or remove the row.") from None
    except (IsADirectoryError, PermissionError) as e:
        raise UserError(f"{where}: image file {file} cannot be read ({e.strerror}).",
                        "point the row at a readable image file.") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format in KEPT_FORMATS:
                return data, im.width, im.height, KEPT_FORMATS[im.format], False
            buf = io.BytesIO()
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, format="PNG")
            return buf.getvalue(), im.width, im.height, ".png", True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{where}: {file} is not a readable image ({e}).",
                        "replace the file with a PNG, JPEG or WebP image, or remove the row.") from None


def _prepare(path: Path, n: int, row: dict, image_col: str, prompt_col: str, cfg: ImportConfig,
             source_text: str, known_prompt: KnownPrompt | None) -> _Prepared:
    name = row.get(image_col)
    where = f"{path} row {n}" + (f" ({name})" if isinstance(name, str) and name.strip() else "")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: no image path in column {image_col!r}.",
                        "give every row the path of its image file.")
    prompt = row.get(prompt_col)
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: the prompt (column {prompt_col!r}) is empty.",
                        "give every image the prompt it was made for, or remove the row.")
    file = Path(name.strip())
    file = file if file.is_absolute() else path.parent / file
    data, width, height, ext, converted = _encoded(file, where)
    sha = hashlib.sha256(data).hexdigest()
    spec = prompt_spec(prompt.strip(), known_prompt)
    model_id = str(row.get("model_id", "")).strip() or cfg.model_id
    seed = _int(row["seed"], "seed", where) if "seed" in row else UNKNOWN_SEED
    settings = _settings(row, where)
    image_id = content_id(model_id, spec.prompt_id, spec.text, seed, settings, sha)
    extra = {k: v for k, v in row.items() if k not in (image_col, prompt_col, *SETTING_COLUMNS)}
    try:
        extra_json = json.dumps(extra, sort_keys=True, default=str, allow_nan=False)
    except ValueError:  # NaN/inf in a Parquet or JSON column: JSON has no such numbers
        extra_json = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in extra.items()}, sort_keys=True, default=str)
    generation = dict(
        image_id=image_id, prompt_id=spec.prompt_id, prompt=spec.text, category=spec.category,
        model_id=model_id, seed=seed, sampler=settings.sampler,
        num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
        eta=settings.eta, height=height, width=width, image_path=f"{IMAGES_DIR}/{image_id}{ext}", sha256=sha,
        round=cfg.round)
    imported = dict(image_id=image_id, source=source_text, source_row=n, file_name=name, extra=extra_json)
    return _Prepared(generation, imported, file, converted)


# ---------------------------------------------------------------------------------------------
# The import


def import_images(cfg: ImportConfig, *, known_prompt: KnownPrompt | None = None) -> ImportResult:
    """Import ``cfg.src`` into the round at ``cfg.root``.  ``known_prompt`` recognises the prompts
    that keep ids of their own (``make import`` passes :func:`shapes.world.prompt_spec`); any other
    prompt gets a content id and category ``other``."""
    if not cfg.src:
        raise UserError("no import source given.",
                        "pass src=<folder with metadata.jsonl or metadata.csv> or src=<listing file>.")
    path = _source_file(Path(cfg.src))
    source_text = str(path.resolve())
    columns, rows = _read_source(path)
    if not rows:
        raise UserError(f"{path} lists no images.", "add one row per image (file_name, prompt).")
    image_col, prompt_col = _columns(path, columns, cfg)
    store = Store(cfg.root)
    in_round = set(store.read(GENERATIONS)["image_id"].to_pylist())

    # Phase 1: check every row; nothing is written until all of them pass.
    prepared: list[_Prepared] = []
    seen: set[str] = set()
    for n, row in rows:
        p = _prepare(path, n, row, image_col, prompt_col, cfg, source_text, known_prompt)
        image_id = p.generation["image_id"]
        if image_id in seen or image_id in in_round:  # the same image again: one item
            continue
        seen.add(image_id)
        target = store.root / p.generation["image_path"]
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != p.generation["sha256"]:
            raise UserError(f"{path} row {n}: {target} already exists with other bytes than this image.",
                            "the round's images folder was edited by hand; restore it or import into "
                            "another root.")
        prepared.append(p)

    # Phase 2: files, then the imports rows, then the generations rows (one append each; both
    # tables are built and checked against their schemas before the first file is written).
    if prepared:
        now = datetime.now(timezone.utc)
        imports = from_rows(IMPORTS, [p.imported | {"created_at": now} for p in prepared], str(path))
        generations = from_rows(GENERATIONS, [p.generation | {"created_at": now} for p in prepared], str(path))
        created = _write_files(store, prepared, path)
        try:
            store.append(IMPORTS, imports)
            store.append(GENERATIONS, generations)
        except BaseException:
            for f in created:  # no generations row points at them
                f.unlink(missing_ok=True)
            raise
    return ImportResult(
        root=str(store.root), source=source_text, rows=len(rows), images_added=len(prepared),
        already_in_round=len(rows) - len(prepared), converted_to_png=sum(p.converted for p in prepared),
        images_in_round=store.read(GENERATIONS).num_rows)


def _write_files(store: Store, prepared: list[_Prepared], path: Path) -> list[Path]:
    """Copy the checked images into ``<root>/images/`` (temp file, fsync, rename) and return the
    files created; on any failure remove them, so no half of an import stays behind."""
    directory = store.root / IMAGES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        for p in prepared:
            target = store.root / p.generation["image_path"]
            if target.exists():  # left by an import that died before its rows: same bytes (checked)
                continue
            if p.converted:
                data = _encoded(p.file, f"{path} row {p.imported['source_row']}")[0]
            else:
                data = p.file.read_bytes()
            if hashlib.sha256(data).hexdigest() != p.generation["sha256"]:
                raise UserError(f"{p.file} changed while it was being imported.", "import again.")
            write_image_file(target, data)
            created.append(target)
        fsync_dir(directory)
        return created
    except BaseException:
        for f in created:
            f.unlink(missing_ok=True)
        raise
