"""``make reward-check``: does a trained reward keep up with a newer round's labels? (evaluation.keeps_up)

    python -m pipelines.reward_check reward=runs/r0/reward root=datasets/mine round=1

The reward the round's model was fine-tuned against, judged on the raters' labels of that round
(binary AUC, accuracy, ranking-pair accuracy) beside its own validation figures.  The last line
printed is the result as JSON; ``keeps_up`` false says the new round's labels teach it what it got
wrong (labelling in rounds pays: docs/loop.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from core.jsonable import json_safe
from evaluation.keeps_up import KeepsUpConfig, check_keeps_up
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(KeepsUpConfig, config_parser(__doc__.splitlines()[0]), argv)
    res = check_keeps_up(cfg)
    ref = res.reference
    print(f"round {res.round} ({res.labelled_images} images, {res.sample}{', biased to hard images' if res.biased_sample else ''}): "
          f"AUC {res.binary_auc:.3f} ± {res.binary_auc_se:.3f} against {ref['binary_auc']:.3f} on the reward's own "
          f"validation images; keeps up: {res.keeps_up}", file=sys.stderr)
    print(json.dumps(json_safe(asdict(res), digits=4)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
