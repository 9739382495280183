"""``make base``: train the shapes-world base models (tokenizer, tiny CLIP, VAE, UNet) and evaluate them.

What it writes and how stages and overwriting work: :mod:`shapes.training.base`.
"""

from __future__ import annotations

import json
import sys

from pipelines.cli import config_parser, parse_config, run
from shapes.training.base import BaseConfig, train_base


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BaseConfig, config_parser(__doc__.splitlines()[0]), argv)
    res = train_base(cfg)
    summary = {"clip_dir": str(res.clip_dir), "sd_dir": str(res.sd_dir),
               "seconds_by_stage": {k: round(v, 1) for k, v in res.seconds_by_stage.items()}}
    if res.sd_metrics:
        summary["overall"] = {k: round(v["overall"], 3) for k, v in res.sd_metrics["sets"].items()}
        summary["clip_retrieval_accuracy"] = round(res.clip_metrics["retrieval"]["accuracy"], 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
