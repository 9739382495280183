"""The reward stage: a CLIP-based predictor of human feedback (Lee et al. 2023).

Other stages use::

    from reward import RewardModel
    rm = RewardModel.from_pretrained("runs/reward")          # device: CUDA if available
    r = rm.score(images, prompts)                             # (B,) float32, no grad, in [0, 1]

Training: ``make reward`` / :func:`reward.train.train_reward`.
"""

from reward.config import RewardConfig
from reward.model import RewardModel, load_reward_fn

__all__ = ["RewardModel", "RewardConfig", "load_reward_fn"]
