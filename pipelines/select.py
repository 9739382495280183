"""``make select``: which of a round's images go to the raters next (collect.selection).

    python -m pipelines.select root=datasets/loop round=1 budget=64 method=uncertain reward=runs/reward

Appends one row per picked image to the root's ``selections`` table; the last line printed is the
summary as JSON (counts, the reward model, mean uncertainty of the picks vs all of the round).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from collect.selection import SelectConfig, select
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SelectConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = asdict(select(cfg))
    result["image_ids"] = len(result["image_ids"])  # the ids are in the selections table; the line stays short
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
