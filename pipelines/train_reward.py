"""``make reward``: train the reward model on the current labels of a dataset root.

    python -m pipelines.train_reward [--config F] data.root=datasets/shapes out_dir=runs/reward

Reads the generations, binary_labels and rankings tables (default root datasets/shapes), trains a
CLIP-based reward model (see reward/), prints the validation metrics table (the model, zero-shot
CLIP and an untrained head; with and without the auxiliary loss) and writes the model folder
(default runs/reward/): reward_config.json, head.safetensors, config.yaml, metrics.json.  An
existing model there is kept unless overwrite=true.
"""

from __future__ import annotations

import sys

from pipelines.cli import config_parser, parse_config, run
from reward.config import RewardConfig
from reward.summary import metrics_table
from reward.train import train_reward


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RewardConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = train_reward(cfg)
    m = result.metrics
    print(metrics_table(m))
    print(f"\nvalidation: {m['data']['val_prompts']} prompts ({m['data']['split']}), "
          f"{m['data']['images']} labelled images in all")
    print(f"wrote {result.out_dir} (model_id {m['model_id']}) in {m['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
