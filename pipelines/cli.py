"""What every entry point shares: ``--config FILE key.sub=value ...`` and one-line user errors."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, TypeVar

from core.config import load_config
from core.errors import UserError

T = TypeVar("T")


def config_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML file with config values")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. train.lr=1e-4")
    return parser


def parse_config(cls: type[T], parser: argparse.ArgumentParser, argv: list[str] | None) -> T:
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a UserError becomes one line on stderr and exit status 2."""
    # transformers warns on import that torchvision is absent (it falls back to PIL processors);
    # that is expected here and only buries the real messages.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
