"""``make loop``: the closed loop on the shapes world: label the fine-tuned model, retrain the reward
on every round, fine-tune again, round after round, beside a one-shot control and the oracle upper
bound.

The stages and their config are :mod:`workflows.loop` (``make loop ARGS="key=value ..."``, keys of
:class:`workflows.loop.LoopConfig`).  A rerun of the same command resumes after the last finished
stage; ``fresh=true`` starts over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.cli import config_parser, parse_config, run
from workflows.loop import LoopConfig, run_loop


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(LoopConfig, config_parser(__doc__.splitlines()[0]), argv)
    results = run_loop(cfg)
    print((Path(cfg.report) / "report.md").read_text())
    print(json.dumps({f"round{r['round']}": round(100 * r["round0_targets"], 1) for r in results["rounds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
