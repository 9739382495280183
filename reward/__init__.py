"""The reward stage: a CLIP-based predictor of human feedback (Lee et al. 2023).

Other stages load a reward as one object (:mod:`reward.reward_fn`)::

    from reward.reward_fn import RewardSource, load_reward
    reward = load_reward(RewardSource(path="runs/reward"), device)   # a RewardModel folder, or the oracle
    r = reward.score(images, prompts)                                # (B,) float32, no grad, in [0, 1]

Training: ``make reward`` / :func:`reward.train.train_reward`.
"""

from reward.config import RewardConfig
from reward.model import RewardModel

__all__ = ["RewardModel", "RewardConfig"]
