"""``make migrate``: rewrite a dataset root's tables in the current schema version.

    python -m pipelines.migrate root=datasets/shapes

Reading never needs it (an older part reads with the defaults of the columns added since, e.g. a
version-1 generations part as round 0); it brings the files on disk up to date for readers that
open them without this package (DuckDB, pyarrow).  Each old part is replaced atomically under its
own name; a root that is current is left as it is.  Last line: JSON, rows migrated per table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from data.store import migrate
from pipelines.cli import config_parser, parse_config, run


@dataclass(frozen=True)
class MigrateConfig:
    root: str = "datasets/shapes"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MigrateConfig, config_parser(__doc__.splitlines()[0]), argv)
    if not Path(cfg.root).is_dir():
        raise UserError(f"dataset root {cfg.root} does not exist.", "pass root=<a dataset root>.")
    print(json.dumps(migrate(cfg.root)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
