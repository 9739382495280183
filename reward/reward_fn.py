"""A reward as the stages that use one see it (fine-tuning maximises it, ``make eval`` reports it):
which reward (:class:`RewardSource`: a learned reward model's folder, or the shapes oracle), the
:class:`RewardFn` protocol, loading it (:func:`load_reward`; the oracle as :class:`OracleReward`,
for ablations) and scoring in batches; and the source's region model (:func:`load_region`), for
region-aware fine-tuning.

:class:`RewardSource` is the ``reward:`` section of a fine-tuning run's and of ``make eval``'s
config; :class:`reward.config.RewardConfig` is another thing: it configures *training* a reward."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from core.config import NonNegativeFloat, PositiveInt
from core.errors import UserError
from core.images import to_uint8
from reward.folder import CONFIG_FILE, load_head_state, reward_clip_folder
from reward.model import RewardModel, load_reward_fn
from shapes.oracle import judge
from shapes.regions import problem_regions
from shapes.world import Prompt

RewardKind = Literal["learned", "oracle"]
# Which of the oracle's judgements is the reward (kind=oracle): "graded", Verdict.score (partial
# credit orders the failures too); "aligned", 1 for an aligned image and 0 for any other (the
# evaluation's own measure, and the shape of a learned P(rater says good)).
OracleScore = Literal["graded", "aligned"]


@dataclass(frozen=True)
class RewardSource:
    kind: RewardKind = "learned"  # "oracle" (shapes world only) is for upper-bound ablations
    path: str = "runs/reward"  # a RewardModel folder (reward package)
    oracle: OracleScore = "graded"  # kind=oracle: which oracle score
    batch_size: PositiveInt = 64
    # c: fine-tune on the reward's upper confidence bound sigmoid(calibrated logit + c * spread)
    # (SEIKO, Uehara et al. 2024; reward.epistemic); needs a learned reward with an epistemic part.
    # 0: the reward itself.  Evaluation always scores the reward itself (evaluation.compare).
    optimism: NonNegativeFloat = 0.0

    def __post_init__(self):  # before anything runs
        if self.optimism > 0 and self.kind == "oracle":
            raise UserError(f"reward.optimism={self.optimism} with reward.kind=oracle: the oracle is exact, it "
                            "has no epistemic spread to be optimistic about.",
                            "set reward.optimism=0, or use a learned reward (reward.kind=learned).")


class RewardFn(Protocol):
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] on any device -> rewards (B,) fp32."""


class OracleReward:
    """The shapes-world oracle as a reward: ``graded``, Verdict.score, at most 3 (2 for aligned,
    plus the share of attributes right, minus 1/4 per missing or extra object); ``aligned``, 1 for
    an aligned image, else 0.  For ablations only: the oracle is also the evaluator, so a model
    trained on it is graded by its own teacher."""

    def __init__(self, score: OracleScore = "graded"):
        self.score = score

    @staticmethod
    def unjudgeable(prompts: list[str]) -> str | None:
        """The first of ``prompts`` the oracle cannot judge (not a shapes-world prompt), or None."""
        for p in prompts:
            try:
                Prompt.parse(p)
            except UserError:
                return p
        return None

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        arr = to_uint8(images)
        parsed = [Prompt.parse(p) for p in prompts]
        verdicts = [judge(a, p) for a, p in zip(arr, parsed)]
        scores = ([v.score(p) for v, p in zip(verdicts, parsed)] if self.score == "graded"
                  else [float(v.aligned) for v in verdicts])
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


def check_reward_folder(cfg: RewardSource) -> None:
    """A learned reward's folder must be there and hold finite weights, and an epistemic part when
    ``optimism`` > 0 (one clear error, before anything runs)."""
    if cfg.kind != "learned":
        return
    if not Path(cfg.path).is_dir():
        raise UserError(f"reward model folder {cfg.path} does not exist.",
                        "train one with `make reward` (or set reward.path to a RewardModel folder).")
    load_head_state(cfg.path)
    reward_clip_folder(Path(cfg.path), check=True)  # its CLIP gives the head's embedding size
    if cfg.optimism > 0 and "epistemic" not in json.loads((Path(cfg.path) / CONFIG_FILE).read_text()):
        raise UserError(f"reward.optimism={cfg.optimism} but the reward model in {cfg.path} has no epistemic part "
                        "(trained before it existed, or with model.epistemic=off).",
                        "retrain it with `make reward` (model.epistemic=linear-ucb, the default), or set reward.optimism=0.")


def load_reward(cfg: RewardSource, device) -> RewardFn:
    if cfg.kind == "oracle":
        return OracleReward(cfg.oracle)
    check_reward_folder(cfg)
    # the reward stage's model: calibrated P(rater says good), its upper bound with optimism > 0
    return load_reward_fn(Path(cfg.path), device=device, optimism=cfg.optimism)


class RegionFn(Protocol):
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> where each is wrong: problem masks (B, H, W) bool."""


def load_region(cfg: RewardSource, device, reward: RewardFn | None = None, threshold: float | None = None) -> RegionFn:
    """The region model of a reward source: a learned reward's region head (:meth:`RewardModel.heatmap`
    above ``threshold``, None: the head's own, chosen when it trained), or with ``kind=oracle`` the
    oracle's exact problem masks (an upper-bound ablation, shapes world).  ``reward``, the source's
    reward already loaded (:meth:`RewardModel.score`), lends its model, so that one CLIP sits in
    memory.  A learned reward without a region head is one clear error."""
    if cfg.kind == "oracle":
        def oracle_masks(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            masks = [problem_regions(a, p).mask for a, p in zip(to_uint8(images), prompts)]
            return torch.as_tensor(np.stack(masks), device=images.device)
        return oracle_masks
    model = getattr(getattr(reward, "func", reward), "__self__", None)  # score, or partial(score, optimism=c)
    if not isinstance(model, RewardModel):
        check_reward_folder(cfg)
        model = RewardModel.from_pretrained(cfg.path, device)
    if model.region_head is None:
        raise UserError(f"the reward model {cfg.path} has no region head, which region.weight > 0 needs.",
                        "train the reward on rater marks (`make reward` on a round with marks; region.head=on), "
                        "or set region.weight=0.")
    cut = model.region_head.threshold if threshold is None else threshold
    return lambda images, prompts: model.heatmap(images, prompts).to(images.device) > cut


def score_in_batches(reward: RewardFn, images: torch.Tensor, prompts: list[str], batch_size: int) -> torch.Tensor:
    return torch.cat([reward(images[i:i + batch_size], prompts[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)])
