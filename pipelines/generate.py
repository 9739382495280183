"""``make generate``: sample images for a labeling round, with recorded seeds.

    python -m pipelines.generate [--config F] pipeline=shapes/models/shapes-sd per_prompt=4 root=datasets/shapes
    python -m pipelines.generate pipeline=runs/finetune-dpok round=1      # a fine-tuned run
    python -m pipelines.generate pipeline=/models/sd-v1-5 adapter=<LoRA folder> round=1

Samples ``per_prompt`` images of each prompt from a Stable Diffusion pipeline folder (default: the
shapes-world model) or a fine-tuned run and writes PNGs plus generations rows (``round``,
``model_fingerprint``, ``run``) under ``root``.  Re-running adds images with seeds not used before
for that prompt and model (its fingerprint); nothing is overwritten.  Images
are saved batch by batch, so an interrupted run keeps what it finished.  ``source=renderer`` draws
the round with the shapes-world renderer instead (a stand-in when no model is at hand; a share
``renderer_mismatch_rate`` of images shows a prompt with one attribute changed).
"""

from __future__ import annotations

import json
import sys

from core.config import save_round_config
from collect.generate import GenerateConfig, generate
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GenerateConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = generate(cfg)
    save_round_config(cfg, cfg.root, "generate")
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
