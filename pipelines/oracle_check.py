"""``make oracle-check``: how far the shapes-world oracle can be trusted as a judge.

    python -m pipelines.oracle_check [n_images=...]

What it does and measures: :mod:`tools.oracle_check`.
"""

from __future__ import annotations

import sys

from pipelines.cli import config_parser, parse_config, run
from tools.oracle_check import OracleCheckConfig, oracle_check


def main(argv: list[str] | None = None) -> int:
    return oracle_check(parse_config(OracleCheckConfig, config_parser(__doc__.splitlines()[0]), argv))


if __name__ == "__main__":
    sys.exit(run(main))
