"""The admin tab's report (issue 58): prompts holding ``$`` are drawn as text, one failing part
never blanks the others, and the Rounds table says n/a for a round without answers."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from data.generations import save_images
from labeling_app.config import GoldConfig, LabelConfig
from labeling_app.raters import RatersFile
from shapes.render import RENDERER, render
from shapes.world import Prompt

DOLLAR_PROMPTS = ["one red circle $\\undefinedmacro{x}$", "price: $$ signs", "a $x^$ square",
                  "a $5 bill next to a $10 bill"]
REPORT = ["summary", "pass_chart", "per_prompt", "timeline", "timeline_df", "counts", "gold", "withdrawn", "rounds"]


@pytest.fixture
def dollar_app(tmp_path):
    """A round whose prompts hold ``$`` (mathtext to matplotlib), every image labelled by an admin."""
    from labeling_app.ui import build_app
    from data import Store

    store = Store(tmp_path / "root")
    p = Prompt.parse("one red circle")
    n = len(DOLLAR_PROMPTS)
    save_images(store, [render(p, s) for s in range(2 * n)], prompts=DOLLAR_PROMPTS * 2,
                prompt_ids=[f"dollar-{i}" for i in range(n)] * 2, categories=["other"] * (2 * n),
                seeds=list(range(2 * n)), model_id="test", settings=RENDERER)
    raters = RatersFile(tmp_path / "raters.json")
    raters.add("lead", "lead-password", admin=True)
    own = tmp_path / "guidelines.md"  # the prompts are not shapes-world ones: the lead's own guidelines
    own.write_text("---\nversion: dollar-1\n---\nGood: the image shows what the prompt says.\n")
    app = build_app(LabelConfig(root=str(store.root), raters_file=str(raters.path), overlap=1,
                                gold=GoldConfig(share=0.0), tasks=("binary",), guidelines=str(own)))
    for i in range(2 * n):
        a = app.assigner.current("lead", "binary")
        app.assigner.submit_binary("lead", a.token, "good" if i % 2 else "bad")
    return app


def report(app) -> dict:
    return dict(zip(REPORT, app.admin_report(SimpleNamespace(username="lead"))))


def test_prompts_with_dollar_signs_are_drawn_as_text(dollar_app):
    out = report(dollar_app)
    assert out["pass_chart"].startswith('<div class="admin-chart"><img id="pass-rate-chart"'), out["pass_chart"][:200]
    assert sorted(out["per_prompt"]["prompt"]) == sorted(DOLLAR_PROMPTS)
    for name in REPORT:
        value = out[name]
        text = value if isinstance(value, str) else value.to_string()
        assert "Could not build" not in text, (name, text)


def test_one_failing_part_shows_its_error_and_the_others_still_show(dollar_app, monkeypatch):
    import labeling_app.handlers as handlers

    def broken(*_a, **_k):
        raise ValueError("chart exploded")

    monkeypatch.setattr(handlers, "pass_rate_chart", broken)
    out = report(dollar_app)
    assert "Could not build the per-prompt pass-rate chart: ValueError: chart exploded" in out["pass_chart"]
    assert "<table>" in out["summary"] and len(out["per_prompt"]) == len(DOLLAR_PROMPTS)
    assert out["timeline"].startswith('<div class="admin-chart">')

    # a shared input that fails takes only the parts that need it
    monkeypatch.setattr(handlers, "round_report", broken)
    out = report(dollar_app)
    for name in ("summary", "timeline"):
        assert "Could not build" in out[name] and "chart exploded" in out[name]
    for name in ("timeline_df", "counts", "gold"):
        assert list(out[name].columns) == ["problem"] and "chart exploded" in out[name]["problem"].iloc[0]
    assert len(out["per_prompt"]) == len(DOLLAR_PROMPTS) and "problem" not in out["rounds"]


def test_the_rounds_table_says_na_for_a_round_without_answers():
    from labeling_app.views import rounds_table

    counts = pd.DataFrame({"round": [1, 0], "images": [4, 4], "selected": [0, 0], "binary_labels": [0, 4],
                           "rankings": [0, 0], "good_share": [float("nan"), 0.25]})
    assert rounds_table(counts)["good_share"].tolist() == ["n/a", "0.250"]
