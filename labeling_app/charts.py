"""The admin tab's charts as PNG bytes: per-prompt pass rates and answers per rater over time.

Drawn with matplotlib's object API (``Figure`` + Agg canvas, no pyplot): Gradio runs handlers in
threads, and pyplot's global figure state is not thread-safe.  The tab embeds the PNGs as
``data:`` URIs, so no chart is ever a file that Gradio's file route could hand to someone else.
Text from data (prompts, rater ids) is drawn with ``parse_math=False``: matplotlib would otherwise
read ``$...$`` in a prompt as mathtext, and an unknown macro (``$\\foo$``) or a lone ``$$`` raises.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

MAX_PROMPTS = 30  # bars in the pass-rate chart: the worst ones (the table lists them all)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def clip(text: str, n: int = 48) -> str:
    """``text`` cut to ``n`` characters (the last an ellipsis) where it is longer: a prompt as a
    chart label or a picker entry, whose full text the page shows elsewhere."""
    return text if len(text) <= n else text[: n - 1] + "…"


def pass_rate_chart(rates: pd.DataFrame, max_prompts: int = MAX_PROMPTS) -> bytes:
    """Horizontal bars of the good-rate of the worst ``max_prompts`` labelled prompts, worst at the
    top.  ``rates``: :func:`data.targets.prompt_pass_rates` (worst first), optionally with the
    ``picked`` column of :func:`data.targets.pick_targets` (those bars are drawn orange)."""
    from matplotlib.figure import Figure

    labelled = rates[rates["labelled_images"] > 0].head(max_prompts)
    n = len(labelled)
    fig = Figure(figsize=(8.0, 1.2 + 0.28 * max(n, 1)))
    ax = fig.add_subplot()
    if n == 0:
        ax.text(0.5, 0.5, "no labelled prompts yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        y = np.arange(n)
        picked = labelled["picked"].to_numpy(bool) if "picked" in labelled else np.zeros(n, bool)
        ax.barh(y, labelled["good_rate"].to_numpy(float), color=np.where(picked, "#ea580c", "#2563eb"))
        for yi, (rate, k) in enumerate(zip(labelled["good_rate"], labelled["labelled_images"])):
            ax.text(min(rate, 1.0) + 0.01, yi, f"{100 * rate:.0f} % of {k}", va="center", fontsize=8)
        ax.set_yticks(y, [clip(str(p)) for p in labelled["prompt"]], fontsize=8, parse_math=False)
        ax.invert_yaxis()  # worst first, at the top
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("good-rate (images judged good by the raters' majority)")
        shown = f"the {n} worst of {int((rates['labelled_images'] > 0).sum())} labelled prompts"
        ax.set_title(f"Per-prompt pass rates: {shown}" + (" (orange: targets)" if picked.any() else ""),
                     fontsize=10)
    fig.tight_layout()
    return _png(fig)


def timeline_chart(timeline: pd.DataFrame, max_ticks: int = 12) -> bytes:
    """Answers per time bucket, stacked by rater; ``timeline``:
    :func:`labeling_app.stats.labels_over_time`.  Buckets are evenly spaced, so the x axis is the
    bucket index, labelled with bucket starts (at most ``max_ticks`` of them)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 3.2))
    ax = fig.add_subplot()
    if timeline.empty:
        ax.text(0.5, 0.5, "no answers yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        wide = timeline.pivot(index="start", columns="rater_id", values="answers").sort_index()
        x = np.arange(len(wide))
        bottom = np.zeros(len(wide))
        for rater in wide.columns:
            ax.bar(x, wide[rater].to_numpy(), bottom=bottom, width=0.85, label=clip(str(rater), 20))
            bottom += wide[rater].to_numpy()
        step = max(1, -(-len(wide) // max_ticks))
        ax.set_xticks(x[::step], [t.strftime("%m-%d %H:%M") for t in wide.index[::step]], fontsize=8,
                      rotation=30, ha="right")
        ax.set_xlim(-0.6, len(wide) - 0.4)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("answers")
        ax.set_xlabel("bucket start (UTC)")
        ax.set_title("Answers per rater over time (binary labels and rankings)", fontsize=10)
        if len(wide.columns) <= 12:
            for text in ax.legend(fontsize=8, loc="upper left").get_texts():
                text.set_parse_math(False)
    fig.tight_layout()
    return _png(fig)
