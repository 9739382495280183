"""The HTML fragments and texts the labeling app shows: prompt, status line, charts, refusals.

Text that comes from data (prompts, rater ids) is HTML-escaped (:func:`esc`) before it reaches a
``gr.HTML`` component, which renders raw HTML.  The prompt of an item carries its opaque token
(``data-token``); :func:`shown_token` reads it back out of a prompt output, as ``gradio_client``
callers do to answer.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from core.errors import UserError
from labeling_app.charts import data_uri
from labeling_app.items import Assignment
from labeling_app.marking import word_chips_html

_TOKEN_RE = re.compile(r'data-token="([0-9a-f]+)"')


def shown_token(prompt_html: str | None) -> str:
    """The token of the item a prompt output shows ('' for none): what an answer quotes."""
    m = _TOKEN_RE.search(prompt_html or "")
    return m.group(1) if m else ""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def prompt_html(a: Assignment | None, paths=(), marks: str = "off") -> str:
    """The prompt of an item, carrying for the page's script its token, its image count and the
    names of its image files (``paths``), so the page can tell its own images from the last
    item's while they load; with ``marks`` (a binary item's marking mode) other than off, the
    chips of its words to mark (:mod:`labeling_app.marking`)."""
    if a is None:
        return '<div class="prompt-text">Nothing left to label here. Thank you!</div>'
    files = "/".join(Path(p).name for p in paths)  # "/" is the one character a file name cannot hold
    return (f'<div class="prompt-text" data-token="{esc(a.token)}" data-images="{len(a.item.image_ids)}" '
            f'data-files="{esc(files)}" data-marks="{esc(marks)}">{esc(a.item.prompt)}</div>'
            + word_chips_html(a.item.prompt, marks))


def status_html(message: str = "", warn: bool = False) -> str:
    if not message:
        return '<div class="status-text"></div>'
    cls = ' class="warn"' if warn else ""
    return f'<div class="status-text"><span{cls}>{esc(message)}</span></div>'


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def chart_html(png: bytes, alt: str, elem_id: str) -> str:
    """A chart inline (a data: URI): only the admin's own event response carries it."""
    return f'<div class="admin-chart"><img id="{elem_id}" alt="{esc(alt)}" src="{data_uri(png)}"></div>'


def timeline_table(timeline):
    """:func:`labeling_app.stats.labels_over_time` as one row per time bucket (latest first), one
    column per rater, and the bucket's total."""
    if timeline.empty:
        return timeline
    wide = timeline.pivot(index="start", columns="rater_id", values="answers").sort_index(ascending=False)
    wide["total"] = wide.sum(axis=1)
    wide.index = wide.index.strftime("%Y-%m-%d %H:%M UTC")
    return wide.rename_axis(columns=None).reset_index()


def rounds_table(counts: pd.DataFrame) -> pd.DataFrame:
    """:func:`labeling_app.stats.round_counts` for the admin tab: a round without binary answers
    says ``n/a`` for its good share, as the summary does (NaN would show as a blank cell)."""
    return counts.assign(good_share=[("n/a" if pd.isna(x) else f"{x:.3f}") for x in counts["good_share"]])


WITHDRAWN_COLUMNS = ["withdrawn_at", "image_id", "prompt", "image_path", "problem"]


def withdrawn_table(withdrawn) -> pd.DataFrame:
    """:meth:`labeling_app.assignment.Assigner.withdrawn` as the admin tab's table, latest first."""
    rows = [dict(withdrawn_at=w.at.strftime("%Y-%m-%d %H:%M:%S UTC"), image_id=w.image_id, prompt=w.prompt,
                 image_path=w.image_path, problem=w.problem) for w in reversed(withdrawn)]
    return pd.DataFrame(rows, columns=WITHDRAWN_COLUMNS)


def attempt(compute):
    """``compute()`` run once now; returns a function that gives its result, or raises its error
    again (so each admin-report part that needs a shared input fails alone, with that error)."""
    try:
        value, error = compute(), None
    except Exception as e:  # noqa: BLE001 - re-raised by each part that uses it
        value, error = None, e

    def result():
        if error is not None:
            raise error
        return value
    return result


def failed_part(name: str, error: Exception, table: bool):
    """What an admin-report part shows in its place when building it failed: the part's name and
    the error, as HTML or as a one-cell table (``table``)."""
    text = f"Could not build the {name}: {type(error).__name__}: {error} (the server log has the details)."
    if table:
        return pd.DataFrame({"problem": [text]})
    return f'<div class="admin-part-failed"><span class="warn">{esc(text)}</span></div>'


def refusal_text(e: UserError) -> str:
    """What a rater reads when an action is refused: the problem and how to go on."""
    return e.problem if not e.fix else f"{e.problem} {e.fix[0].upper()}{e.fix[1:]}"


def nothing_shown() -> UserError:
    """The refusal of an answer sent while the page showed no item (a fresh one per request:
    an exception instance carries its traceback, so threads must not share one)."""
    return UserError("no item was on your screen (still loading, or hidden), so nothing was saved.",
                     "answer once the image is shown.")
