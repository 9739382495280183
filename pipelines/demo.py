"""``make demo``: the whole loop on the shapes world, from the committed base model to a report.

The stages and their config are :mod:`workflows.demo` (``make demo ARGS="key=value ..."``, keys of
:class:`workflows.demo.DemoConfig`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.cli import config_parser, parse_config, run
from workflows.demo import DemoConfig, run_demo


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, config_parser(__doc__.splitlines()[0]), argv)
    results = run_demo(cfg)
    print((Path(cfg.report) / "report.md").read_text())
    print(json.dumps({m: results[m]["targets"]["overall"] for m in ("base", "rwl", "dpok", "dpok_oracle")
                      if m in results}))
    print(f"\nReport: {cfg.report}/report.md (and report.html, results.json).\n"
          f"Label this round yourself in a browser:\n"
          f"  make rater-add RATER=you ADMIN=1\n"
          f"  make label ARGS=\"root={cfg.root}\"      # then open http://127.0.0.1:7860")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
