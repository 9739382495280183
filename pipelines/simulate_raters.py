"""``make simulate-raters``: simulated raters label a round through the labeling app's own code.

    python -m pipelines.simulate_raters [--config F] label.root=datasets/shapes raters=5 flip_rate=0.1

Same assignment (overlap K, gold items, leases) and same store writes as the app, without a
browser: the shapes-world stand-in for people, for the demo and the tests.  The last line is a
JSON summary with the round's agreement and the raters' gold accuracy.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from labeling_app.config import LabelConfig
from pipelines.cli import config_parser, parse_config, run
from pipelines.config import save_config


@dataclass(frozen=True)
class SimulateConfig:
    label: LabelConfig = field(default_factory=LabelConfig)
    """The round (root, tasks, overlap, gold, guidelines) exactly as `make label` reads it."""
    raters: int = 5
    flip_rate: float = 0.1
    seed: int = 0
    max_labels_per_rater: Optional[int] = None


def simulate(cfg: SimulateConfig) -> dict:
    from data.shapes.raters import default_panel
    from labeling_app.assignment import Assigner
    from labeling_app.gold import read_gold
    from labeling_app.guidelines import load_guidelines
    from labeling_app.simulate import run_simulated_round
    from labeling_app.stats import round_report

    guidelines = load_guidelines(cfg.label.guidelines_path)
    assigner = Assigner.open(cfg.label, guidelines.version)
    panel = default_panel(cfg.raters, flip_rate=cfg.flip_rate, seed=cfg.seed)
    with tqdm(desc="simulate-raters", unit="label", file=sys.stderr) as bar:
        summary = run_simulated_round(assigner, panel, seed=cfg.seed,
                                      max_labels_per_rater=cfg.max_labels_per_rater, progress=bar)
    report = round_report(assigner.store, read_gold(assigner.store)).summary()
    return {"added_binary": summary.binary_labels, "added_rankings": summary.rankings,
            "added_gold": summary.gold_labels,
            "round_completion": {t: round(c, 4) for t, c in assigner.progress("").round_completion.items()},
            **report}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SimulateConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = simulate(cfg)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save_config(cfg, Path(cfg.label.root) / "configs" / f"simulate-raters-{stamp}.yaml")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
