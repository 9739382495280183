"""Load models from local folders in the standard formats, and nothing else.

One way in for every stage: a diffusers pipeline folder of a supported family (:mod:`core.families`:
a ``StableDiffusionPipeline`` such as the shapes-world model or a user's Stable Diffusion v1.5, and
for sampling an SD3 or FLUX folder) and a transformers ``CLIPModel`` folder (the shapes-world CLIP or
a user's CLIP ViT-L/14).  ``local_files_only=True`` everywhere: a path that is not a model folder is
a clear error, never a download.

A fine-tuned run folder (what ``make finetune`` writes) is a model wherever a pipeline folder is
taken: :func:`resolve_model` names what to load (:class:`ModelRef`) and :func:`load_model` loads it,
a LoRA run as its base pipeline with the adapter fused in, a side-network run with its side
network beside the base's UNet (:mod:`core.side`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from core.errors import UserError
from core.families import Family, folder_family
from core.side import SIDE_DIR, SIDE_FILE, SIDE_WEIGHTS, load_side

if TYPE_CHECKING:
    from transformers import CLIPModel

PIPELINE_INDEX = "model_index.json"  # marks a StableDiffusionPipeline folder (base model or full run)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # what a LoRA run saves (pipe.load_lora_weights)
RUN_CONFIG = "config.yaml"  # a run's resolved config; model.pipeline names the base it was trained from
ADAPTER_HASH_HEX = 16  # hex digits of the adapter weights' sha256 in a LoRA run's fingerprint


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
    """(native size in denoiser positions, pixels per position) of a pipeline folder, read from its
    config files without loading weights (to check a requested image size before anything runs;
    ``core.sampling.image_size``).  For a StableDiffusionPipeline: the UNet's sample_size in latent
    pixels and the VAE scale factor; for a transformer family :meth:`core.families.Family.geometry`
    (its patches or packed tokens)."""
    path = Path(path)
    family = folder_family(path)
    den, title = family.denoiser, family.denoiser_title
    try:
        denoiser = json.loads((path / den / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        geometry = family.geometry(denoiser, 2 ** (len(vae["block_out_channels"]) - 1))
        latents = int(vae.get("latent_channels", 4)), family.latent_channels(denoiser)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"could not read the {title} and VAE configs of {path}: {e}",
                        f"check that the folder is complete ({den}/config.json, vae/config.json).") from None
    if latents[0] != latents[1]:  # e.g. a VAE of another model family put in the folder
        raise UserError(f"the VAE in {path / 'vae'} makes {latents[0]}-channel latents and the {title} in "
                        f"{path / den} takes {latents[1]}: they are not one model's parts.",
                        f"use the VAE the {title} was trained with (the same {family.lineage} family).")
    return geometry


def load_scheduler(path: str | os.PathLike):
    """The scheduler of a StableDiffusionPipeline folder, from its scheduler config alone (no
    weights): what a report names before any model is loaded."""
    import diffusers

    folder = Path(path) / "scheduler"
    try:
        name = json.loads((folder / "scheduler_config.json").read_text())["_class_name"]
        return getattr(diffusers, name).from_pretrained(folder, local_files_only=True)
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"could not read the scheduler config of {path}: {e}",
                        "check that the folder is complete (scheduler/scheduler_config.json).") from None


def model_fingerprint(path: str | os.PathLike, *, config_only: bool = False, pipeline_only: bool = False) -> str:
    """A location-independent identity of a model folder (16 hex digits), the one fingerprint every
    stage uses.

    By default (what image ids hash, :func:`data.generations.save_images`): every JSON file's
    relative path and bytes, and every weight file's relative path, size and the SHA-256 of its
    first and last MiB (hashing whole multi-GB checkpoints at every run would be slow).  Copies of
    one model at two paths agree; checkpoints of one architecture differ in their weights' bytes.

    ``config_only``: the cheaper identity a reward model records for its CLIP folder
    (``reward_config.json``'s ``clip_fingerprint``, and part of a backbone-trained reward model's
    id): the bytes of ``config.json`` and the names and sizes of the folder's top-level weight
    files.  Saved reward folders carry these values, so they are computed exactly as before.

    ``pipeline_only``: only ``model_index.json`` and the component folders it names (a full-pipeline
    fine-tuning run, whose folder also holds checkpoints and metrics that come and go); the same
    value as the default for a folder written by ``save_pretrained`` alone."""
    root = Path(path)
    if config_only:
        h = hashlib.sha256((root / "config.json").read_bytes())
        for f in sorted(root.iterdir()):
            if f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
        return h.hexdigest()[:16]
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if pipeline_only:
        parts = {k for k in json.loads((root / PIPELINE_INDEX).read_text()) if not k.startswith("_")}
        files = [f for f in files if f.relative_to(root).parts[0] in parts or f.name == PIPELINE_INDEX]
    for f in files:
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
    """The pipeline of a local folder, with its family's diffusers class (:mod:`core.families`: a
    ``StableDiffusionPipeline``, ``StableDiffusion3Pipeline`` or ``FluxPipeline``), moved to
    ``device`` (default: CUDA if available).  An SD safety checker is not loaded (research use;
    saves memory)."""
    import diffusers

    path = Path(path)
    check_folder(path, "model_index.json", "Stable Diffusion pipeline")
    family = folder_family(path)
    try:
        pipe = getattr(diffusers, family.pipeline_class).from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32,
            **family.load_kwargs(json.loads((path / PIPELINE_INDEX).read_text())))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"could not load the {family.lineage} pipeline in {path}: {e}",
                        f"check that the folder is complete ({family.folder_parts()}).") from None
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


# ---------------------------------------------------------------------------------------------
# A model: a base pipeline folder, or a fine-tuned run of one


@dataclass(frozen=True)
class ModelRef:
    """What a stage samples from, resolved and checked (:func:`resolve_model`), before anything
    is loaded or written."""

    base: Path  # the StableDiffusionPipeline folder loaded (a full-pipeline run: the run folder itself)
    adapter: Path | None  # a folder holding LORA_WEIGHTS, fused into `base` at load; None: none
    run: Path | None  # the fine-tuned run (or adapter) folder as given; None: a base model
    # core.loading.model_fingerprint(base) for a base model; "<base fp>+<16 hex of the adapter
    # weights' sha256>" for a LoRA run or a side network; the run's own pipeline fingerprint for a full run
    fingerprint: str
    side: Path | None = None  # a side-network run's side/ folder (core.side), put beside `base`'s UNet at load
    side_strength: float | None = None  # its lambda at load; None: the one it was trained with
    # the multiplier on what fine-tuning learned, at load (with_scale): a LoRA fused at scale x
    # alpha / r, a side network at scale x its lambda; 1: as trained.  0 would be the base itself
    scale: float = 1.0

    @property
    def finetuned(self) -> bool:
        return self.run is not None

    @property
    def family(self) -> Family:
        """The model family of the base folder (core.families; checked by resolve_model)."""
        return folder_family(self.base)


def run_base(folder: str | os.PathLike) -> str | None:
    """The base pipeline a fine-tuned run folder was trained from: ``model.pipeline`` of its
    config.yaml, or None when the folder has no run config (a base pipeline folder may hold a
    config.yaml of its own training, without model.pipeline)."""
    cfg = Path(folder) / RUN_CONFIG
    if not cfg.is_file():
        return None
    try:
        tree = yaml.safe_load(cfg.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"the run config {cfg} cannot be read: {e}.",
                        "restore the config.yaml `make finetune` wrote into the run folder.") from None
    model = tree.get("model") if isinstance(tree, dict) else None
    pipeline = model.get("pipeline") if isinstance(model, dict) else None
    return str(pipeline) if pipeline else None


def lora_denoiser(folder: str | os.PathLike) -> str | None:
    """Which denoiser the LoRA weights in ``folder`` adapt, from their names' prefix (diffusers
    saves ``unet.*`` for a UNet, ``transformer.*`` for SD3's / FLUX's transformer); None for
    another naming or a file whose header does not read (loading it reports that: :func:`load_model`).
    Reads the file's header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(Path(folder) / LORA_WEIGHTS, "pt") as f:
            prefixes = {k.split(".", 1)[0] for k in f.keys()}
    except (OSError, SafetensorError):
        return None
    return next(iter(prefixes)) if len(prefixes) == 1 and prefixes <= {"unet", "transformer"} else None


def check_lora_family(adapter: str | os.PathLike, family: Family, base: str | os.PathLike) -> None:
    """The LoRA weights in ``adapter`` must adapt ``family``'s denoiser (a UNet's on an SD base, a
    transformer's on an SD3 / FLUX one): another family's LoRA is a :class:`UserError`."""
    kind = lora_denoiser(adapter)
    if kind is not None and kind != family.denoiser:
        other = "a UNet (Stable Diffusion 1.x/2.x)" if kind == "unet" else "a flow-matching transformer (SD3 / FLUX)"
        raise UserError(f"the LoRA in {adapter} adapts {other}, and {base} is a {family.title} folder, whose "
                        f"denoiser is a {family.denoiser_title}: a LoRA of another model family.",
                        "apply the LoRA to the base model it was trained on (its run's config.yaml names it).")


def _adapter_fingerprint(base_fp: str, adapter: Path, weights: str = LORA_WEIGHTS) -> str:
    digest = hashlib.sha256((adapter / weights).read_bytes()).hexdigest()  # adapter files are small
    return f"{base_fp}+{digest[:ADAPTER_HASH_HEX]}"


def _check_same_base(run: Path, recorded: str, base: Path) -> None:
    """A run trained from ``recorded`` must not be applied to another model ``base`` (compared by
    fingerprint, so copies of one model at two paths agree).  A recorded base that is not on this
    machine cannot be compared; the given base is taken."""
    rec = Path(recorded)
    if not (rec / PIPELINE_INDEX).is_file():
        return
    if model_fingerprint(rec) != model_fingerprint(base):
        raise UserError(f"the run {run} was trained from {recorded}, another model than the base {base} "
                        "given with it (their fingerprints differ).",
                        f"pass base={recorded} (or a copy of it), or the run trained from {base}.")


def with_side_strength(ref: ModelRef, strength: float) -> ModelRef:
    """A side-network run's :class:`ModelRef` at strength lambda ``strength`` (another model: its
    fingerprint ends in ``@<lambda>``); for any other model an error."""
    if ref.side is None:
        raise UserError(f"side_strength={strength} was given for {ref.run or ref.base}, which is no side-network run.",
                        "leave side_strength out, or pass a run of make finetune with model.parameterisation=side.")
    return replace(ref, side_strength=strength, fingerprint=f"{ref.fingerprint}@{strength:g}")


def with_scale(ref: ModelRef, scale: float) -> ModelRef:
    """A LoRA or side-network run's :class:`ModelRef` with what fine-tuning learned scaled by
    ``scale`` at load (diffusers' ``fuse_lora(lora_scale=)``: W + scale (alpha / r) B A; a side
    network's lambda times ``scale``): another model, its fingerprint ending in ``*<scale>``, so
    its generation seeds and image ids are its own.  Scale 1 is the run as trained (the same
    fingerprint).  A scale that is no positive number, or a model with no adapter to scale (a base
    pipeline, a full-pipeline run), is an error."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = float("nan")
    where = ref.run or ref.base
    if not (scale > 0 and scale != float("inf")):
        raise UserError(f"the scale {scale!r} given for {where} is no positive number.",
                        "give a scale above 0, e.g. @0.25 (1: the run as trained).")
    if ref.adapter is None and ref.side is None:
        raise UserError(f"a scale ({scale:g}) was given for {where}, which has no LoRA or side network to scale "
                        "(a base pipeline or a full-pipeline run).",
                        "drop the @scale, or pass a LoRA or side-network run of make finetune.")
    if scale == 1:
        return ref
    return replace(ref, scale=ref.scale * scale, fingerprint=f"{ref.fingerprint}*{scale:g}")


def resolve_model(path: str | os.PathLike, adapter: str | os.PathLike | None = None, *,
                  base: str | os.PathLike | None = None) -> ModelRef:
    """The model at ``path``: a pipeline folder of a supported family (core.families), or a
    fine-tuned run folder (config.yaml naming ``model.pipeline``, plus LORA_WEIGHTS, a side network
    or a full pipeline).

    ``adapter``: a folder with LORA_WEIGHTS applied to the base pipeline ``path`` (a run folder or
    a bare adapter).  ``base``: the base pipeline the caller applies runs to (``make eval``'s
    ``base=``): a LoRA run is fused into it, and any run must have been trained from the same model.
    Every problem is a :class:`UserError` raised here, before anything is loaded or written: a
    folder that is not there or is no model, a run without weights or without its config, a run
    whose base is another model than the one given, an adapter given with a run folder, a folder
    of an unsupported family (core.families.folder_family)."""
    ref = _resolve_model(Path(path), adapter, base)
    family = folder_family(ref.base)  # an unsupported family is refused here, before anything is written
    if ref.adapter is not None:
        check_lora_family(ref.adapter, family, ref.base)
    if ref.side is not None and family.flow:
        raise UserError(f"the side-network run {ref.run} sits on {ref.base}, a {family.title} folder; side "
                        "networks are UNet modules.", "use side networks with Stable Diffusion 1.x/2.x bases.")
    return ref


def _resolve_model(path: Path, adapter, base) -> ModelRef:
    """:func:`resolve_model`'s checks of the folders (the family aside)."""
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist.",
                        "pass a Stable Diffusion pipeline folder or a fine-tuned run folder (make finetune).")
    recorded = run_base(path)
    has_side = (path / SIDE_DIR / SIDE_FILE).is_file()
    has_adapter = (path / LORA_WEIGHTS).is_file() or has_side  # LoRA or side-network weights
    has_pipeline = (path / PIPELINE_INDEX).is_file()
    if adapter is not None:
        if recorded is not None or has_adapter:
            raise UserError(f"adapter={adapter} was given with the fine-tuned run {path}, which is a model "
                            "of its own.", "pass the run alone, or a base pipeline folder with adapter=.")
        check_folder(path, PIPELINE_INDEX, "Stable Diffusion pipeline")
        if base is not None and model_fingerprint(base) != model_fingerprint(path):
            raise UserError(f"the model {path} is another model than the base {base}.",
                            f"apply the adapter to {base}, or leave base out.")
        adapter = Path(adapter)
        if not (adapter / LORA_WEIGHTS).is_file():
            raise UserError(f"adapter folder {adapter} holds no {LORA_WEIGHTS}.",
                            "pass the folder of a LoRA run (make finetune with model.parameterisation=lora).")
        trained_from = run_base(adapter)
        if trained_from is not None:
            _check_same_base(adapter, trained_from, path)
        return ModelRef(path, adapter, adapter, _adapter_fingerprint(model_fingerprint(path), adapter))
    if recorded is None and not has_adapter:  # a base pipeline folder
        if not has_pipeline:
            raise UserError(f"{path} holds no fine-tuned model (no LoRA weights, no pipeline) and is no "
                            f"pipeline folder (no {PIPELINE_INDEX}).",
                            "pass a Stable Diffusion pipeline folder, or the folder `make finetune` wrote.")
        if base is not None and model_fingerprint(base) != model_fingerprint(path):
            raise UserError(f"the model {path} is another model than the base {base}.",
                            "pass fine-tuned runs of the base, or that model as the base.")
        return ModelRef(path, None, None, model_fingerprint(path))
    if not has_adapter and not has_pipeline:
        raise UserError(f"{path} holds no fine-tuned model (no LoRA weights, no pipeline).",
                        "run `make finetune` first (a run that stopped early saves nothing), or pass the "
                        "folder it wrote.")
    if recorded is None:  # adapter weights without the config that names their base
        if base is None:
            raise UserError(f"{path} has adapter weights but no {RUN_CONFIG} naming the base they were "
                            "trained from.", f"pass the base pipeline with base= (make eval), or restore "
                            f"the run's {RUN_CONFIG}.")
        return _adapter_ref(Path(base), path, has_side)
    if base is not None:
        _check_same_base(path, recorded, Path(base))
    if has_pipeline:  # a full-pipeline run: the folder is the model
        return ModelRef(path, None, path, model_fingerprint(path, pipeline_only=True))
    base_dir = Path(base) if base is not None else Path(recorded)
    if not (base_dir / PIPELINE_INDEX).is_file():
        raise UserError(f"the run {path} was trained from {recorded}, which is not a Stable Diffusion "
                        "pipeline folder on this machine.", f"pass the base with base= (make eval) or "
                        f"as pipeline=<base> adapter={path}.")
    return _adapter_ref(base_dir, path, has_side)


def _adapter_ref(base: Path, run: Path, side: bool) -> ModelRef:
    """A LoRA run's or a side-network run's :class:`ModelRef` on the pipeline ``base``."""
    if side:
        fp = _adapter_fingerprint(model_fingerprint(base), run / SIDE_DIR, SIDE_WEIGHTS)
        return ModelRef(base, None, run, fp, side=run / SIDE_DIR)
    return ModelRef(base, run, run, _adapter_fingerprint(model_fingerprint(base), run))


def _adapter_scale(adapter: Path) -> float:
    """The scale to fuse ``adapter``'s LoRA weights at, beyond what diffusers applies: 1 for a file
    that carries its adapter config (diffusers' lora_adapter_metadata: lora_alpha / r is applied
    from it), else lora_alpha / lora_rank of the run's config.yaml, where diffusers took alpha =
    rank (runs saved before the metadata was written); 1 without either."""
    from safetensors import safe_open

    with safe_open(adapter / LORA_WEIGHTS, "pt") as f:
        if "lora_adapter_metadata" in (f.metadata() or {}):
            return 1.0
    try:
        model = (yaml.safe_load((adapter / RUN_CONFIG).read_text()) or {}).get("model") or {}
        return float(model["lora_alpha"]) / float(model["lora_rank"])
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return 1.0


def load_model(ref: ModelRef, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """The pipeline of a :class:`ModelRef`: its base pipeline, with the adapter (if any) fused, or
    its side network beside the UNet (``pipe.unet`` a :class:`core.side.SideUNet` of strength
    ``ref.side_strength``, None: the strength it was trained with), either scaled by ``ref.scale``.

    Fused: W + (alpha / r) B A is folded into each adapted layer and the adapter layers are removed,
    the same model up to fp32 rounding, and faster to sample (LoRA layers add two small matmuls per
    projection)."""
    pipe = load_sd_pipeline(ref.base, device=device, dtype=dtype)
    if ref.side is not None:
        pipe.unet = load_side(ref.side, pipe.unet, ref.side_strength)
        pipe.unet.strength *= ref.scale  # lambda x scale (with_scale)
    if ref.adapter is not None:
        try:
            pipe.load_lora_weights(ref.adapter)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"the LoRA weights in {ref.adapter} do not fit the pipeline {ref.base}: {e}",
                            "apply the adapter to the base pipeline it was trained from.") from None
        pipe.fuse_lora(lora_scale=_adapter_scale(ref.adapter) * ref.scale)  # ref.scale: with_scale
        pipe.unload_lora_weights()  # drops the adapter layers; the fused weights stay
    return pipe
