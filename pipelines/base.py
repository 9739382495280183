"""``make base``: train the shapes-world base models (tokenizer, tiny CLIP, VAE, UNet) and evaluate them.

Writes under ``out_dir`` (default ``runs/base/``):

- ``shapes-clip/``: a ``CLIPModel`` folder (+ tokenizer, image processor), ``metrics.json``
  (zero-shot retrieval), ``config.yaml``, ``README.md`` model card;
- ``shapes-sd/``: a ``StableDiffusionPipeline`` folder, ``metrics.json`` (oracle alignment on the
  train and held-out prompts, subsets, VAE reconstruction), ``config.yaml``, ``grids/*.png``,
  ``README.md`` model card.

Stages run in order (``stages=[clip,vae,unet,eval]``); a stage left out reuses what an earlier run
left in ``out_dir``.  An existing output folder is never replaced unless ``overwrite=true``; the
committed checkpoints are rebuilt with ``out_dir=shapes/models overwrite=true``.
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
