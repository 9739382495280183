"""``make score-rewards``: score every image of a generations table with a trained reward model.

    python -m pipelines.score_rewards root=datasets/shapes model=runs/reward

Writes one row per image to the dataset root's ``rewards`` table, keyed by (image_id,
reward_model); images this reward model already scored are skipped.  Read the scores with
``data.read_table(root, "rewards")``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Literal

from core.config import PositiveInt
from data.store import Store
from evaluation.scoring import score_generations
from pipelines.cli import config_parser, parse_config, run
from reward.reward_fn import LearnedReward


@dataclass(frozen=True)
class ScoreRewardsConfig:
    root: str = "datasets/shapes"
    model: str = "runs/reward"
    batch_size: PositiveInt = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ScoreRewardsConfig, config_parser(__doc__.splitlines()[0]), argv)
    device = None if cfg.device == "auto" else cfg.device
    model = LearnedReward.load(cfg.model, device, batch_size=cfg.batch_size)
    summary = score_generations(Store(cfg.root), model, model_path=cfg.model, progress=cfg.progress)
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
