"""A reward as the stages that use one see it (fine-tuning maximises it, ``make eval`` reports it,
``make select`` ranks by its uncertainty): which reward (:class:`RewardSource`: a learned reward
model's folder, or the shapes oracle) and loading it (:func:`load_reward`) as one :class:`Reward`.
A reward scores images in batches; where it has them, it also marks where an image is wrong (its
region model: a learned reward's region head, or the oracle's exact problem masks), embeds, and
gives its epistemic spread.  Asking a reward for what it lacks is one clear error, and
:func:`load_reward` checks what the run will ask for (``region=True``) before anything runs.

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
from reward.epistemic import optimistic
from reward.folder import CONFIG_FILE, load_head_state, reward_clip_folder
from reward.model import RewardModel
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


class Reward:
    """A loaded reward.  This base class wraps a plain ``fn`` (:class:`RewardFn`; a custom reward
    in tests and probes), which only scores; :class:`LearnedReward` and :class:`OracleReward` add
    what they have.  Images: (B, 3, H, W) in [0, 1] on any device (a learned reward also takes PIL
    lists and uint8 arrays, :meth:`reward.model.RewardModel.score`); prompts: one per image."""

    has_region = False  # marks where an image is wrong (masks, heatmap)
    has_spread = False  # gives an epistemic spread
    # its rewards carry a gradient to the image pixels (reward backpropagation, finetune.draft);
    # a plain fn is taken at its word, its first result checked (:meth:`differentiable_score`)
    differentiable = True

    def __init__(self, fn: RewardFn | None = None, batch_size: int = 64, name: str = "a custom reward"):
        self.fn, self.batch_size, self.name = fn, batch_size, name

    def score(self, images, prompts: list[str]) -> torch.Tensor:
        """Rewards (B,) float32, ``batch_size`` images a call."""
        return torch.cat([self._score(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
                          for i in range(0, len(prompts), self.batch_size)])

    def _score(self, images, prompts: list[str]) -> torch.Tensor:
        return self.fn(images, prompts)

    def differentiable_score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (B,) float32 of ``images`` (B, 3, H, W) in [0, 1] with the graph back to them:
        what reward backpropagation (:mod:`finetune.draft`) maximises.  A reward whose scores carry
        no gradient is one clear error."""
        self.require_differentiable()
        out = torch.cat([self._differentiable(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
                         for i in range(0, len(prompts), self.batch_size)])
        if images.requires_grad and not out.requires_grad:
            self.differentiable = False
            self.require_differentiable()
        return out.float()

    def _differentiable(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.fn(images, prompts)

    def require_differentiable(self) -> None:
        if not self.differentiable:
            raise UserError(f"{self.name} gives no gradient with respect to the image, which method=draft "
                            "back-propagates.",
                            "use a learned reward (reward.kind=learned), or METHOD=dpok, which needs only scores.")

    def masks(self, images: torch.Tensor, prompts: list[str], threshold: float | None = None) -> torch.Tensor:
        """Where each image is wrong: problem masks (B, H, W) bool on the images' device, the
        :meth:`heatmap` above ``threshold`` (None: the region model's own)."""
        return self.heatmap(images, prompts).to(images.device) > (0.5 if threshold is None else threshold)

    def heatmap(self, images, prompts: list[str]) -> torch.Tensor:
        """Where each image is wrong: (B, H, W) float32 in [0, 1].  Needs a region model."""
        self.require_region()
        raise NotImplementedError

    def spread(self, images, prompts: list[str]) -> torch.Tensor:
        """The reward's epistemic standard deviation (B,) float32, calibrated-logit units."""
        raise UserError(f"{self.name} has no epistemic spread.", "use a learned reward trained with "
                        "model.epistemic=linear-ucb (the default of `make reward`).")

    def embed(self, images, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm embeddings (B, D) of the images and of their prompts, no grad."""
        raise UserError(f"{self.name} has no embeddings: it is not a learned reward.",
                        "use a learned reward (reward.kind=learned, reward.path=<make reward folder>).")

    def require_region(self) -> None:
        """A reward without a region model is one clear error (region-aware fine-tuning asks)."""
        if not self.has_region:
            raise UserError(f"{self.name} has no region head, which region.weight > 0 needs.",
                            "train the reward on rater marks (`make reward` on a round with marks; region.head=on), "
                            "or set region.weight=0.")


class LearnedReward(Reward):
    """A reward model (:class:`reward.model.RewardModel`): its calibrated P(rater says good), or
    with ``optimism`` c > 0 its upper bound (:meth:`RewardModel.score`)."""

    def __init__(self, model: RewardModel, optimism: float = 0.0, batch_size: int = 64, name: str | None = None):
        super().__init__(None, batch_size, f"the reward model {name or model.model_id}")
        self.model, self.model_id = model, model.model_id
        self.optimism = model.check_optimism(optimism) if optimism else 0.0
        self.has_region, self.has_spread = model.region_head is not None, model.epistemic is not None

    @classmethod
    def load(cls, path, device=None, *, optimism: float = 0.0, batch_size: int = 64) -> LearnedReward:
        """The reward model folder ``path`` (:meth:`RewardModel.from_pretrained`) as a reward."""
        return cls(RewardModel.from_pretrained(path, device), optimism, batch_size, str(path))

    def _score(self, images, prompts: list[str]) -> torch.Tensor:
        return self.model.score(images, prompts, optimism=self.optimism)

    def _differentiable(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """:meth:`_score` with the graph: CLIP's preprocessing is torch ops
        (:class:`reward.preprocess.ClipPreprocess`), and the frozen CLIP and head pass the gradient
        on to the pixels without collecting one themselves (the text side comes from the cache)."""
        m = self.model
        if m.training:  # dropout off, as scoring has it
            m.eval()
        if any(p.requires_grad for p in m.parameters()):  # a reward being maximised is not being trained
            m.requires_grad_(False)
        if not self.optimism:
            return m(images, prompts)
        logits, phi = m.head.logit_and_hidden(*m.embed_pairs(images, prompts))
        return optimistic(logits, phi, m.require_epistemic(), m.head.calib_scale, m.head.calib_bias, raw=False,
                          optimism=self.optimism)

    def masks(self, images: torch.Tensor, prompts: list[str], threshold: float | None = None) -> torch.Tensor:
        self.require_region()  # the threshold chosen when the head trained, unless the run sets one
        return super().masks(images, prompts, self.model.region_head.threshold if threshold is None else threshold)

    def heatmap(self, images, prompts: list[str]) -> torch.Tensor:
        self.require_region()
        return self.model.heatmap(images, prompts)

    def spread(self, images, prompts: list[str]) -> torch.Tensor:
        return self.model.spread(images, prompts)

    @torch.no_grad()
    def embed(self, images, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_pairs(images, prompts)


class OracleReward(Reward):
    """The shapes-world oracle as a reward: ``graded``, Verdict.score, at most 3 (2 for aligned,
    plus the share of attributes right, minus 1/4 per missing or extra object); ``aligned``, 1 for
    an aligned image, else 0.  Its region model is the oracle's exact problem masks.  For ablations
    only: the oracle is also the evaluator, so a model trained on it is graded by its own teacher."""

    has_region = True
    differentiable = False  # judged from uint8 pixels by rules

    def __init__(self, score: OracleScore = "graded", batch_size: int = 64):
        super().__init__(None, batch_size, "the shapes oracle (reward.kind=oracle)")
        self.kind = score

    @staticmethod
    def unjudgeable(prompts: list[str]) -> str | None:
        """The first of ``prompts`` the oracle cannot judge (not a shapes-world prompt), or None."""
        for p in prompts:
            try:
                Prompt.parse(p)
            except UserError:
                return p
        return None

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        arr = to_uint8(images)
        parsed = [Prompt.parse(p) for p in prompts]
        verdicts = [judge(a, p) for a, p in zip(arr, parsed)]
        scores = ([v.score(p) for v, p in zip(verdicts, parsed)] if self.kind == "graded"
                  else [float(v.aligned) for v in verdicts])
        return torch.tensor(scores, dtype=torch.float32, device=images.device)

    def masks(self, images: torch.Tensor, prompts: list[str], threshold: float | None = None) -> torch.Tensor:
        masks = [problem_regions(a, p).mask for a, p in zip(to_uint8(images), prompts)]
        return torch.as_tensor(np.stack(masks), device=images.device)

    def heatmap(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.masks(images, prompts).float()


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


def load_reward(cfg: RewardSource, device, *, region: bool = False) -> Reward:
    """The reward ``cfg`` names, on ``device``; ``region``: the run will ask for its region model,
    so a reward without one is refused here, before anything runs."""
    if cfg.kind == "oracle":
        return OracleReward(cfg.oracle, cfg.batch_size)
    check_reward_folder(cfg)
    # the reward stage's model: calibrated P(rater says good), its upper bound with optimism > 0
    reward = LearnedReward.load(cfg.path, device, optimism=cfg.optimism, batch_size=cfg.batch_size)
    if region:
        reward.require_region()
    return reward
