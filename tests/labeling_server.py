"""A live labeling app on 127.0.0.1 for the API and browser tests (a real server, real store)."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from data import Store
from data.generations import save_images
from labeling_app.config import DEFAULT_GUIDELINES, GoldConfig, LabelConfig, ServerConfig
from labeling_app.raters import RatersFile
from shapes.render import RENDERER
from shapes.render import render, render_round
from shapes.world import Prompt, prompt_set

HOSTILE_PROMPT = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> two red circles'
PASSWORD = "rater-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_round(root: Path, n_prompts: int = 8, per_prompt: int = 3, hostile: bool = True) -> Store:
    """Renders of shapes-world prompts, plus (``hostile``) two images whose prompt holds HTML."""
    store = Store(root)
    render_round(store, prompt_set("train")[:n_prompts], per_prompt=per_prompt, seed=0, mismatch_rate=0.4)
    if hostile:
        p = Prompt.parse("two red circles")
        save_images(store, [render(p, 1), render(p, 2)], prompts=[HOSTILE_PROMPT] * 2,
                    prompt_ids=["hostile"] * 2, categories=["other"] * 2, seeds=[1, 2],
                    model_id="test", settings=RENDERER)
    return store


def make_raters(path: Path, names: list[str], admins: tuple[str, ...] = ()) -> RatersFile:
    rf = RatersFile(path)
    for n in names:
        rf.add(n, PASSWORD, admin=n in admins)
    return rf


def label_config(root: Path, raters: RatersFile, **kw) -> LabelConfig:
    # the packaged guidelines named: a round with the hostile prompt is no shapes-only round
    cfg = LabelConfig(root=str(root), raters_file=str(raters.path), overlap=1, guidelines=str(DEFAULT_GUIDELINES),
                      gold=GoldConfig(share=0.0), server=ServerConfig(host="127.0.0.1", port=free_port()))
    return replace(cfg, **kw)


@contextmanager
def serve(cfg: LabelConfig):
    """Run the app in this process (threads) and stop it afterwards; yields (app, url)."""
    from labeling_app.ui import launch
    from labeling_app.ui import build_app

    app = build_app(cfg)
    demo, (_, url, _) = launch(app, prevent_thread_lock=True, quiet=True)
    try:
        yield app, url
    finally:
        demo.close()
        if getattr(app, "compactor", None) is not None:
            app.compactor.stop.set()
