"""The prompts a fine-tuning run trains on (:func:`training_prompts`) and their grouping for
per-prompt statistics (:func:`prompt_group_ids`)."""

from __future__ import annotations

import torch

from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from shapes.world import prompt_set


def training_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts.prompts_file:
        return read_prompts_file(cfg.prompts.prompts_file)
    return [p.text for p in prompt_set(cfg.prompts.split)]


def prompt_group_ids(prompts: list[str]) -> torch.Tensor:
    """Integer ids (B,) grouping identical prompts, for per-prompt statistics."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts])
