"""``make label``: serve the labeling app for a round (Gradio, behind the raters' login).

    python -m pipelines.label [--config F] root=datasets/shapes server.port=7860 overlap=3

See labeling_app/config.py for every key and the README's "Running a labeling round".
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from core.config import save_config
from core.errors import UserError
from labeling_app.config import LabelConfig
from labeling_app.ui import build_app, launch
from pipelines.cli import config_parser, parse_config, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(LabelConfig, config_parser(__doc__.splitlines()[0]), argv)
    app = build_app(cfg)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save_config(cfg, Path(cfg.root) / "configs" / f"label-{stamp}.yaml")
    # The app's own lines (refused actions and logins, one line each) on stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("labeling_app")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    p = app.assigner.progress("")
    print(f"round {cfg.root}: " + ", ".join(f"{n} {t} items" for t, n in p.items.items())
          + f", overlap {cfg.overlap}, gold items {len(app.assigner.gold_answer)}, "
          f"guidelines {app.guidelines.version}", flush=True)
    print(f"labeling app on http://{cfg.server.host}:{cfg.server.port}  (Ctrl-C stops it)", flush=True)
    try:
        launch(app, quiet=True)
    except OSError as e:
        raise UserError(f"cannot serve on {cfg.server.host}:{cfg.server.port} ({e}).",
                        "pick a free port with server.port=<port>.") from None
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
