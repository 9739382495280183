"""What a fine-tuning run takes as data besides its reward: the prompts it trains on
(:func:`training_prompts`: a prompts file or a shapes-world set), their grouping for per-prompt
statistics (:func:`prompt_group_ids`) and, for RWL's ``pretrain_source=shapes``, shapes-world
image-caption pairs (:func:`shapes_pretrain_pairs`).  The one module of fine-tuning that reads the
shapes world's prompts and renderer, so the methods themselves do not."""

from __future__ import annotations

import torch
from PIL import Image

from core import seeds
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from shapes.render import render
from shapes.world import prompt_set


def training_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts.prompts_file:
        return read_prompts_file(cfg.prompts.prompts_file)
    return [p.text for p in prompt_set(cfg.prompts.split)]


def prompt_group_ids(prompts: list[str]) -> torch.Tensor:
    """Integer ids (B,) grouping identical prompts, for per-prompt statistics."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts])


def shapes_pretrain_pairs(per_prompt: int, seed: int, size: int) -> tuple[list[Image.Image], list[str]]:
    """``per_prompt`` renders (``size`` x ``size`` pixels) of each shapes-world train prompt, the
    base model's own training distribution, with their true prompts; render seeds from ``seed``."""
    prompts = [p.text for p in prompt_set("train") for _ in range(per_prompt)]
    render_seeds = [seeds.render_seed(seed, i, offset=50_000) for i in range(len(prompts))]
    return [render(p, s, size) for p, s in zip(prompts, render_seeds)], prompts
