"""What a fine-tuning run takes as data besides its reward: the prompts it trains on
(:func:`training_prompts`: a prompts file or a shapes-world set), their grouping for per-prompt
statistics (:func:`prompt_group_ids`) and, for RWL's ``pretrain_source=shapes``, shapes-world
image-caption pairs (:func:`shapes_pretrain_pairs`).  The one module of fine-tuning that reads the
shapes world's prompts and renderer, so the methods themselves do not."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from core import seeds
from core.errors import UserError
from data.schemas import GENERATIONS
from data.store import Store
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from shapes.render import render
from shapes.tokenizer import is_shapes_tokenizer
from shapes.world import prompt_set, prompt_spec


def training_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts.prompts_file:
        return read_prompts_file(cfg.prompts.prompts_file)
    return [p.text for p in prompt_set(cfg.prompts.split)]


def check_prompts_fit_model(cfg: FinetuneConfig) -> None:
    """A shapes-world model (its tokenizer the shapes world's word-level one) reads shapes-world
    prompts only: every other word is ``[UNK]`` to it, so a prompts file of other prompts would
    fine-tune it on text it cannot read.  Refused before anything is written; the usual cause is a
    run on one's own prompts that left ``model.pipeline`` at its default, the shipped shapes model."""
    if not is_shapes_tokenizer(Path(cfg.model.pipeline) / "tokenizer"):
        return
    other = next((t for t in training_prompts(cfg) if prompt_spec(t) is None), None)
    if other is not None:
        raise UserError(f"model.pipeline={cfg.model.pipeline} is a shapes-world model, which reads shapes-world "
                        f"prompts only, and '{other}' (prompts.prompts_file={cfg.prompts.prompts_file}) is not one.",
                        "fine-tune the model that made your round's images: model.pipeline=<its folder> "
                        "(make targets prints the line), with CONFIG= its settings (e.g. finetune/configs/sd15.yaml).")


# The sample grids' prompts on the shapes world (no prompts file): one of each kind of target.
SHAPES_GRID = ("one red circle", "two blue squares on a white background", "three yellow circles",
               "four green squares on a gray background")


def grid_prompts(cfg: FinetuneConfig, label_prompts: list[str] | None = None) -> list[str]:
    """The prompts of the sample grids: ``prompts.eval_prompts``; else the first four distinct
    prompts of ``prompts.prompts_file`` (a run on your prompts draws yours), or of the labelled
    images a DPO / KTO run learns from (``label_prompts``); else SHAPES_GRID."""
    if cfg.prompts.eval_prompts:
        return list(cfg.prompts.eval_prompts)
    if cfg.prompts.prompts_file:
        return list(dict.fromkeys(training_prompts(cfg)))[:4]
    if label_prompts:
        return list(dict.fromkeys(label_prompts))[:4]
    return list(SHAPES_GRID)


def prompt_group_ids(prompts: list[str]) -> torch.Tensor:
    """Integer ids (B,) grouping identical prompts, for per-prompt statistics."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts])


def check_pretrain_source(cfg: FinetuneConfig, height: int, width: int) -> None:
    """RWL's D_pre (``rwl.pretrain_source``) must fit the model, checked before anything is
    written: shapes-world renders only for a model that reads shapes-world prompts (its tokenizer
    is the shapes world's) at a square size; a dataset root's images all at the run's size."""
    source = cfg.rwl.pretrain_source
    if source == "shapes":
        if not is_shapes_tokenizer(Path(cfg.model.pipeline) / "tokenizer"):
            raise UserError(f"rwl.pretrain_source=shapes pre-trains on shapes-world renders, and "
                            f"model.pipeline={cfg.model.pipeline} is not a shapes-world model.",
                            "import image-caption pairs like your model's training data (make import "
                            "ARGS=\"src=<folder> root=datasets/captions\") and set rwl.pretrain_source=datasets/captions.")
        if height != width:
            raise UserError(f"rwl.pretrain_source=shapes renders square images; this run samples {width}x{height}.",
                            "set sampling.height equal to sampling.width, or rwl.pretrain_source to a dataset root "
                            "of images at that size.")
        return
    root = Path(source)
    gens = Store(root).to_pandas(GENERATIONS) if root.is_dir() else None
    if gens is None or gens.empty:
        raise UserError(f"no usable images in the dataset root {root} (rwl.pretrain_source).",
                        "import image-caption pairs there first (make import ARGS=\"src=<folder> root=<root>\").")
    sizes = gens.groupby(["width", "height"]).size()
    off = gens[(gens["width"] != width) | (gens["height"] != height)]
    if not off.empty:
        first = off.iloc[0]
        listed = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.items())
        raise UserError(f"image {first['image_id']} in {root} is {first['width']}x{first['height']} (width x height), "
                        f"the model is fine-tuned at {width}x{height}; rwl.pretrain_source needs every image at "
                        f"that size ({len(off)} of {len(gens)} are not; sizes {listed}).",
                        "resize them to that size before `make import`, or set sampling.height / sampling.width to theirs.")


def shapes_pretrain_pairs(per_prompt: int, seed: int, size: int) -> tuple[list[Image.Image], list[str]]:
    """``per_prompt`` renders (``size`` x ``size`` pixels) of each shapes-world train prompt, the
    base model's own training distribution, with their true prompts; render seeds from ``seed``."""
    prompts = [p.text for p in prompt_set("train") for _ in range(per_prompt)]
    render_seeds = [seeds.render_seed(seed, i, offset=50_000) for i in range(len(prompts))]
    return [render(p, s, size) for p, s in zip(prompts, render_seeds)], prompts
