"""``make base``: train the shapes-world base models (tokenizer, tiny CLIP, VAE, UNet) and evaluate them.

What it writes and how stages and overwriting work: :mod:`shapes.training.base` (training) and
:mod:`evaluation.base_model` (the eval stage: metrics, grids, model cards).
"""

from __future__ import annotations

import json
import sys

from evaluation.base_model import evaluate_base
from pipelines.cli import config_parser, parse_config, run
from shapes.training.base import BaseConfig, train_base


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(BaseConfig, config_parser(__doc__.splitlines()[0]), argv)
    res = train_base(cfg)
    summary = {"clip_dir": str(res.clip_dir), "sd_dir": str(res.sd_dir),
               **({"flow_dir": str(res.flow_dir)} if "flow" in cfg.stages else {}),
               "seconds_by_stage": {k: round(v, 1) for k, v in res.seconds_by_stage.items()}}
    if "eval" in cfg.stages:
        clip_metrics, sd_metrics = evaluate_base(cfg, res)
        summary["seconds_by_stage"] = sd_metrics["seconds_by_stage"]
        summary["overall"] = {k: round(v["overall"], 3) for k, v in sd_metrics["sets"].items()}
        summary["clip_retrieval_accuracy"] = round(clip_metrics["retrieval"]["accuracy"], 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
