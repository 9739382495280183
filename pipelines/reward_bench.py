"""``make reward-bench``: measure the reward stage's targets in the shapes world.

    python -m pipelines.reward_bench [per_prompt=8] [flip_rate=0.1] [reward.model.clip=...]

What it does and measures: :mod:`tools.reward_bench`.
"""

from __future__ import annotations

import sys

from pipelines.cli import config_parser, parse_config, run
from tools.reward_bench import RewardBenchConfig, reward_bench


def main(argv: list[str] | None = None) -> int:
    return reward_bench(parse_config(RewardBenchConfig, config_parser(__doc__.splitlines()[0]), argv))


if __name__ == "__main__":
    sys.exit(run(main))
