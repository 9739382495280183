"""``make round-check``: did round N pay? (evaluation.round_check)

    python -m pipelines.round_check root=datasets/mine round=2

Run after labelling round N: the raters' good-rate on round N's random share (the model fine-tuned
in round N-1) against the same prompts' good-rate in round N-1 (the model before it), each with its
binomial standard error, and the difference with its own.  The last line printed is the result as
JSON; ``verdict`` "fell back" says do not continue from this model: fine-tune the next round from
the best model so far (``init=``, docs/loop.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from core.jsonable import json_safe
from evaluation.round_check import RoundCheckConfig, check_round
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RoundCheckConfig, config_parser(__doc__.splitlines()[0]), argv)
    res = check_round(cfg)
    print(f"round {res.round} vs round {res.against} on {res.prompts} shared prompts ({res.sample}"
          f"{', biased to hard images' if res.biased_sample else ''}): good-rate {100 * res.good_rate:.1f} ± "
          f"{100 * res.good_rate_se:.1f} % ({res.images} images) against {100 * res.previous_good_rate:.1f} ± "
          f"{100 * res.previous_good_rate_se:.1f} % ({res.previous_images}); difference "
          f"{100 * res.difference:+.1f} ± {100 * res.difference_se:.1f}: {res.verdict}", file=sys.stderr)
    print(json.dumps(json_safe(asdict(res), digits=4)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
