"""``make results-page``: regenerate docs/results.md from the results files in docs/results/.

    python -m pipelines.results_page [folder=docs/results] [out=docs/results.md]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from finetune.results_page import results_page
from pipelines.cli import config_parser, parse_config, run


@dataclass(frozen=True)
class ResultsPageConfig:
    folder: str = "docs/results"
    out: str = "docs/results.md"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ResultsPageConfig, config_parser(__doc__.splitlines()[0]), argv)
    Path(cfg.out).write_text(results_page(cfg.folder))
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
