"""``make finetune METHOD=dpok|rwl|draft|dpo|kto``: fine-tune against a reward model, or the labels (dpo, kto).

    python -m pipelines.finetune method=dpok                      # finetune/configs/dpok.yaml
    python -m pipelines.finetune --config my.yaml dpok.kl_weight=0.1 output_dir=runs/x

Without --config, the shipped config of the method (finetune/configs/<method>.yaml) is used.
Multi-GPU / multi-node: ``make finetune-multi`` (``.venv/bin/accelerate launch -m pipelines.finetune --config F method=dpok``).
"""

from __future__ import annotations

import sys

from core.config import load_config, parse_overrides
from core.errors import UserError
from finetune.config import CONFIGS, METHODS, FinetuneConfig
from finetune.train import train
from pipelines.cli import config_parser, run


# What a run folder holds besides config.yaml and metrics.json, by model.parameterisation.
SAVED = {"lora": "LoRA weights", "full": "the whole pipeline", "side": "the side network in side/"}


def main(argv: list[str] | None = None) -> int:
    args = config_parser(__doc__.splitlines()[0]).parse_args(argv)
    method = parse_overrides(args.overrides).get("method")
    if method is not None and method not in METHODS:
        raise UserError(f"unknown fine-tuning method '{method}'.", f"use METHOD= one of {', '.join(METHODS)}.")
    # --config F: F's method unless the command line names one; without: the method's shipped config
    config = args.config or CONFIGS / f"{method or 'dpok'}.yaml"
    cfg = load_config(FinetuneConfig, config, list(args.overrides))
    result = train(cfg)
    final = result.metrics["final"]
    weights = SAVED[cfg.model.parameterisation]
    print(f"{cfg.method}: wrote {result.output_dir} ({weights}, config.yaml, metrics.json); "
          + ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float) and not k.startswith("seconds")))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
