"""``make loadtest-label``: many concurrent raters against a live labeling app, through gradio_client.

    python -m pipelines.loadtest_label [--config F] raters=20 labels_per_rater=50

What it does and measures: :mod:`tools.loadtest_label`.
"""

from __future__ import annotations

import sys

from pipelines.cli import config_parser, parse_config, run
from tools.loadtest_label import LoadtestConfig, loadtest_label


def main(argv: list[str] | None = None) -> int:
    return loadtest_label(parse_config(LoadtestConfig, config_parser(__doc__.splitlines()[0]), argv))


if __name__ == "__main__":
    sys.exit(run(main))
