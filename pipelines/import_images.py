"""``make import``: bring images made elsewhere into a round, with their prompts.

    python -m pipelines.import_images src=<folder or listing> root=datasets/shapes [model_id=NAME] [round=0]

``src`` is a folder in the Hugging Face imagefolder convention (images + metadata.jsonl, .csv or
.parquet with ``file_name`` and ``prompt``; optional ``model_id``, ``seed``; other columns kept in
the round's ``imports`` table) or a CSV/JSONL/Parquet listing of image paths and prompts.  Each
image becomes a generations row (sha256, size, content-addressed id) the labeling app, the reward
and fine-tuning read like generated ones.  Importing again adds nothing; nothing is overwritten; a
bad row is one error naming it, with nothing of the import written.  The last line is JSON.
"""

from __future__ import annotations

import json
import sys

from core.config import save_round_config
from collect.imports import ImportConfig, import_images
from pipelines.cli import config_parser, parse_config, run
from shapes.world import prompt_spec


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ImportConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = import_images(cfg, known_prompt=prompt_spec)
    save_round_config(cfg, cfg.root, "import")
    print(json.dumps(result.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
