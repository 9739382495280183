"""The prompts a fine-tuning run trains on (:func:`training_prompts`), their order over DPOK's
rounds (:func:`cycled_prompts`), their grouping for per-prompt statistics
(:func:`prompt_group_ids`) and each prompt's reward history (:class:`PromptRewardHistory`)."""

from __future__ import annotations

import numpy as np
import torch

from core import seeds
from data.targets import read_prompts_file
from finetune.config import FinetuneConfig
from shapes.world import prompt_set


def training_prompts(cfg: FinetuneConfig) -> list[str]:
    if cfg.prompts.prompts_file:
        return read_prompts_file(cfg.prompts.prompts_file)
    return [p.text for p in prompt_set(cfg.prompts.split)]


def cycled_prompts(prompts: list[str], round: int, per_round: int, seed: int, process: int = 0) -> list[str]:
    """Round ``round``'s ``per_round`` prompts when the run goes through its prompts in passes:
    pass k is a permutation of ``prompts`` seeded by (seed, k, process), and round r takes
    positions [r * per_round, (r + 1) * per_round) of the passes laid end to end.  So every prompt
    gets the same number of rounds (to within one pass), where independent draws give 32 targets
    Binomial(40, 1/4) visits each over the demo's 40 rounds of 8 (5 to 15 typical)."""
    n = len(prompts)
    passes: dict[int, np.ndarray] = {}
    out = []
    for pos in range(round * per_round, (round + 1) * per_round):
        k = pos // n
        if k not in passes:
            passes[k] = seeds.rng(seed, seeds.Stream.DPOK_PROMPT_PASS, k, process).permutation(n)
        out.append(prompts[passes[k][pos % n]])
    return out


def prompt_group_ids(prompts: list[str]) -> torch.Tensor:
    """Integer ids (B,) grouping identical prompts, for per-prompt statistics."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(p, len(index)) for p in prompts])


class PromptRewardHistory:
    """Each prompt's last ``size`` rewards across rounds: DDPO's per-prompt stat tracking, so a
    prompt's baseline averages more than the round's few samples of it (4 in the shipped config,
    where one lucky sample moves the group mean by a quarter of its reward).

    :meth:`update` appends a round's rewards, then returns each sample's baseline and spread: the
    mean and population std of its prompt's kept rewards (this round's included).  The state is
    plain lists, so it goes into a checkpoint as it is (:meth:`state_dict`) and a resumed run
    continues exactly.
    """

    def __init__(self, size: int, state: dict[str, list[float]] | None = None):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._kept: dict[str, list[float]] = {p: list(v) for p, v in (state or {}).items()}

    def update(self, prompts: list[str], rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (B,) of ``prompts`` (B) -> per-sample (mean, std), each (B,), rewards' dtype and device."""
        for p, v in zip(prompts, rewards.detach().double().cpu().tolist()):
            self._kept.setdefault(p, []).append(v)
        stats = {}
        for p in set(prompts):
            kept = self._kept[p] = self._kept[p][-self.size:]
            stats[p] = (np.mean(kept), np.std(kept))
        out = torch.tensor([stats[p] for p in prompts], dtype=rewards.dtype, device=rewards.device)  # (B, 2)
        return out[:, 0], out[:, 1]

    def state_dict(self) -> dict[str, list[float]]:
        return {p: list(v) for p, v in self._kept.items()}
