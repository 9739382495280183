"""``make label-export``: the round's labels as they stand (undone ones removed), for analysts.

    python -m pipelines.label_export [--config F] root=datasets/shapes

Writes ``<root>/exports/<UTC time>/`` (binary_labels, rankings, pairs, generations, gold as
Parquet, summary.json, and a zip of them); the last line is a JSON summary.  The admin tab's
Export button does the same.  ``format=hf`` writes ``<root>/exports/<UTC time>-hf/`` instead: a
Hugging Face dataset folder (binary labels with their images, rankings as Pick-a-Pic pairs, a
dataset card) that ``datasets.load_dataset("parquet", data_files=...)`` opens offline.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from core.errors import UserError
from data.store import Store
from labeling_app.export import ExportFormat, export_round
from pipelines.cli import config_parser, parse_config, run


@dataclass(frozen=True)
class ExportConfig:
    root: str = "datasets/shapes"
    format: ExportFormat = "parquet"  # hf: a Hugging Face dataset folder with the images, <time>-hf/


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    cfg = parse_config(ExportConfig, config_parser(__doc__.splitlines()[0]), argv)
    if not (Path(cfg.root) / "generations").is_dir():
        raise UserError(f"{cfg.root} holds no round (no generations table).", "pass root=<dataset root>.")
    result = export_round(Store(cfg.root), format=cfg.format)
    print(json.dumps({"directory": str(result.directory), "zip": result.zip_path and str(result.zip_path),
                      "rows": result.rows}))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
