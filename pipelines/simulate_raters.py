"""``make simulate-raters``: simulated raters label a round through the labeling app's own code.

    python -m pipelines.simulate_raters [--config F] label.root=datasets/shapes raters=5 flip_rate=0.1

Same assignment (overlap K, gold items, leases) and same store writes as the app, without a
browser: the shapes-world stand-in for people, for the demo and the tests.  The raters mark where
each bad image is wrong, as the app lets people, unless the round has marking off
(``label.marks=off``).  The last line is a JSON summary with the round's agreement, the raters' gold
accuracy and the marks added.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from core.config import save_config
from labeling_app.simulate import SimulateConfig, simulate
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SimulateConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = simulate(cfg)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save_config(cfg, Path(cfg.label.root) / "configs" / f"simulate-raters-{stamp}.yaml")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
