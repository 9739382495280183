"""``make results-page``: file loose run records into their study's records.jsonl, regenerate
experiments/results.md from every record under experiments/, and the README's demo-results block
from the demo runs that experiments/readme.json names.

    python -m pipelines.results_page [folder=experiments] [out=experiments/results.md] [readme=README.md]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tools.records import load_runs, pack
from tools.results_page import fill_readme, readme_block, readme_runs, results_page
from pipelines.cli import config_parser, parse_config, run


@dataclass(frozen=True)
class ResultsPageConfig:
    folder: str = "experiments"
    out: str = "experiments/results.md"
    readme: str | None = "README.md"  # its demo-results block is refilled; None: left alone


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ResultsPageConfig, config_parser(__doc__.splitlines()[0]), argv)
    # every file read and checked before anything is written
    runs = load_runs(cfg.folder)
    quoted = readme_runs(cfg.folder, runs["demo"])
    page = results_page(cfg.folder, runs, [label for label, _ in quoted])
    readme = (fill_readme(Path(cfg.readme).read_text(), readme_block(quoted, cfg.folder))
              if cfg.readme and quoted else None)
    moved = pack(cfg.folder)
    if moved:
        print(f"filed {moved} loose records into their studies' records.jsonl")
    Path(cfg.out).write_text(page)
    print(f"wrote {cfg.out}")
    if readme is not None:
        Path(cfg.readme).write_text(readme)
        print(f"filled the demo-results block of {cfg.readme} ({len(quoted)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
