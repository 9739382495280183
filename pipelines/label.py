"""``make label``: serve the labeling app for a round (Gradio, behind the raters' login).

    python -m pipelines.label [--config F] root=datasets/shapes server.port=7860 overlap=3

See labeling_app/config.py for every key and the README's "Running a labeling round".
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from data.errors import UserError
from data.store import Store
from labeling_app.config import LabelConfig
from pipelines.cli import config_parser, parse_config, run
from pipelines.config import save_config


def build_app(cfg: LabelConfig):
    """The app of a round as configured (checks the raters file, guidelines and round first)."""
    from labeling_app.assignment import Assigner
    from labeling_app.guidelines import load_guidelines
    from labeling_app.raters import RatersFile
    from labeling_app.ui import LabelingApp

    raters = RatersFile(cfg.raters_file)
    if not any(not a.disabled for a in raters.accounts()):
        raise UserError(f"no enabled rater in {cfg.raters_file}, so nobody could sign in.",
                        "add one: `make rater-add RATER=alice ADMIN=1` (ADMIN=1 for the lead).")
    guidelines = load_guidelines(cfg.guidelines_path)
    # Merging small part files happens in a background thread (labeling_app.ui.launch), not inside
    # a rater's request.
    assigner = Assigner.open(cfg, guidelines.version, store=Store(cfg.root, compact_every=0))
    return LabelingApp(cfg, assigner, raters, guidelines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(LabelConfig, config_parser(__doc__.splitlines()[0]), argv)
    app = build_app(cfg)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save_config(cfg, Path(cfg.root) / "configs" / f"label-{stamp}.yaml")
    from labeling_app.ui import launch

    # The app's own lines (refused actions and logins, one line each) on stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("labeling_app")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    p = app.assigner.progress("")
    print(f"round {cfg.root}: " + ", ".join(f"{n} {t} items" for t, n in p.items.items())
          + f", overlap {cfg.overlap}, gold share {cfg.gold.share if cfg.uses_gold else 0}, "
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
