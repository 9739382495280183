"""The labeling app's event handlers: what each Gradio event of a rater or an admin calls.

Everything a rater can do is one Gradio event whose handler takes the rater id from the login
session (``gr.Request.username``), never from the page.  An answer quotes the opaque token of the
item *the page shows*: the item's prompt carries it (``data-token``), and the page's script hands
it over only while that item's images are loaded and visible (:data:`labeling_app.page.HEAD`), so
a key pressed while no item is on screen does nothing and the server refuses an answer for an item
the page never displayed (or no longer displays).  A refused action is answered with its reason in
the tab's status line and the current item left in place, never with an error (Gradio marks every
output of an event that raises, which locks the tab); it logs one line.
"""

from __future__ import annotations

import logging
import math
import os

# Set before gradio is imported.  No usage analytics leave the machine.  Gradio's queue also
# recomputes a pandas summary of up to 10,000 past events after *every* event (for its monitoring
# page, which the app does not use): 6 ms and growing per request; recompute it every 500 events.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")

import gradio as gr  # noqa: E402

from core.errors import UserError
from data.marks import image_marks
from data.targets import pick_targets, prompt_pass_rates
from labeling_app.assignment import Assigner, Served
from labeling_app.charts import pass_rate_chart, timeline_chart
from labeling_app.config import LabelConfig
from labeling_app.export import export_round
from labeling_app.guidelines import Guidelines
from labeling_app.marking import parse_marks
from labeling_app.marks_admin import heatmap_html, picker_choices
from labeling_app.raters import RatersFile
from labeling_app.stats import round_counts, round_report
from labeling_app.views import (attempt, chart_html, esc, failed_part, nothing_shown, pct, prompt_html,
                                refusal_text, rounds_table, status_html, timeline_table, withdrawn_table)
from labeling_app.web import EXPORT_ROUTE

log = logging.getLogger("labeling_app")


class LabelingHandlers:
    """The handlers bound to one round; :class:`labeling_app.ui.LabelingApp` lays them out."""

    def __init__(self, cfg: LabelConfig, assigner: Assigner, raters: RatersFile, guidelines: Guidelines):
        self.cfg = cfg
        self.assigner = assigner
        self.raters = raters
        self.guidelines = guidelines
        self.slots = cfg.rank_max_images

    # -- session ---------------------------------------------------------------------------

    @staticmethod
    def refused(who: str, action: str, e: UserError) -> str:
        """Log a refused action on one line; returns the text for the rater."""
        log.warning("refused %s by %s: %s", action, who, e.problem)
        return refusal_text(e)

    def rater(self, request: gr.Request | None) -> str:
        """The signed-in rater; refuses a disabled or unknown account even with a live session.
        (An error, not a status: without a session nothing on the page can work until a reload.)"""
        username = getattr(request, "username", None) if request is not None else None
        if not username or not self.raters.is_active(username):
            e = UserError("You are not signed in (or your account was disabled).", "reload the page to sign in.")
            raise gr.Error(self.refused(username or "(no session)", "request", e), print_exception=False)
        return username

    def progress_html(self, rater_id: str) -> str:
        p = self.assigner.progress(rater_id)
        own = " · ".join(f"{n} {'images' if t == 'binary' else 'rankings'}" for t, n in p.own.items())
        rnd = " · ".join(f"{'images' if t == 'binary' else 'rankings'} {pct(c)}"
                         for t, c in p.round_completion.items())
        return (f'<div class="progress-text">Signed in as <b>{esc(rater_id)}</b> · '
                f'your answers: {esc(own)} · round complete: {esc(rnd)} · '
                f'<a href="logout">sign out</a></div>')

    # -- binary ----------------------------------------------------------------------------

    def binary_view(self, rater_id: str, served: Served, message: str = "", warn: bool = False,
                    reason=""):
        """Outputs of the binary tab: image, prompt, status, progress, skip reason."""
        image = str(served.paths[0]) if served.assignment else None
        return (image, prompt_html(served.assignment, served.paths, self.cfg.marks), status_html(message, warn),
                self.progress_html(rater_id), reason)

    def binary_refused(self, rater_id: str, action: str, e: UserError, reason=gr.skip()):
        """The rater's current item again, with the reason the action was refused."""
        return self.binary_view(rater_id, self.assigner.serve(rater_id, "binary"),
                                self.refused(rater_id, action, e), warn=True, reason=reason)

    def next_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        return self.binary_view(rater_id, self.assigner.serve(rater_id, "binary"))

    def answer_binary(self, label: str, reason: str, seen: str | None, request: gr.Request, marks: str | None = None):
        """``seen``: the token of the item the page showed ('' when it showed none); ``marks``:
        the page's marks of that item as JSON (:func:`labeling_app.marking.parse_marks`).  A
        refused answer keeps the skip box's text (the page keeps its marks)."""
        rater_id = self.rater(request)
        try:
            if not seen:
                raise nothing_shown()
            points, words = parse_marks(marks)
            self.assigner.submit_binary(rater_id, seen, label, reason, points=points, words=words)
        except UserError as e:
            return self.binary_refused(rater_id, label, e)
        marked = f" with {len(points)} point(s) and {len(words)} word(s) marked" if points or words else ""
        return self.binary_view(rater_id, self.assigner.serve(rater_id, "binary"), f"Saved: {label}{marked}.")

    def _answer_fn(self, label: str):
        # Gradio passes gr.Request only to a positional parameter annotated with it.
        # ``marks`` defaults to None so API callers that send no marks need not name it.
        def answer(reason: str, seen: str, marks: str | None = None, request: gr.Request = None):
            return self.answer_binary(label, reason, seen, request, marks)
        answer.__name__ = f"answer_{label}"
        return answer

    def undo_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "binary")
        except UserError as e:
            return self.binary_refused(rater_id, "undo", e)
        return self.binary_view(rater_id, self.assigner.serve(rater_id, "binary", a),
                                "Your last answer was taken back; answer this image again.")

    # -- ranking ---------------------------------------------------------------------------

    def ranking_view(self, rater_id: str, served: Served, shown: int, message: str = "",
                     warn: bool = False, ranks=None):
        """Outputs of the ranking tab.  ``shown``: how many image slots the page shows now.  Only
        when that changes are the slots re-configured (gr.update makes Gradio rebuild and re-send
        component configs: ~70 ms of server CPU for a ranking answer, against ~5 ms for values).
        ``ranks``: the selectors' values to keep (a refused ranking stays on the page to fix)."""
        n = len(served.paths)
        paths = [str(p) for p in served.paths] + [None] * (self.slots - n)
        if n == shown:
            images, ranks = paths, list(ranks) if ranks is not None else [None] * self.slots
        else:
            images = [gr.update(value=paths[i], visible=i < n) for i in range(self.slots)]
            ranks = [gr.update(choices=list(range(1, n + 1)), value=None, visible=i < n)
                     for i in range(self.slots)]
        return (prompt_html(served.assignment, served.paths), *images, *ranks, status_html(message, warn),
                self.progress_html(rater_id), n)

    def next_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        return self.ranking_view(rater_id, self.assigner.serve(rater_id, "ranking"), shown)

    def submit_ranking(self, request: gr.Request, seen: str | None, shown: int, *ranks):
        """``seen``: the token of the set the page showed; ``ranks``: the rank selectors."""
        rater_id = self.rater(request)
        try:
            if not seen:
                raise nothing_shown()
            self.assigner.submit_ranking(rater_id, seen, list(ranks))
        except UserError as e:
            now = self.assigner.serve(rater_id, "ranking")
            same = now.assignment is not None and now.assignment.token == seen  # the same set: keep the choices
            return self.ranking_view(rater_id, now, shown, self.refused(rater_id, "ranking", e), warn=True,
                                     ranks=ranks if same else None)
        return self.ranking_view(rater_id, self.assigner.serve(rater_id, "ranking"), shown, "Saved your ranking.")

    def undo_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "ranking")
        except UserError as e:
            return self.ranking_view(rater_id, self.assigner.serve(rater_id, "ranking"), shown,
                                     self.refused(rater_id, "undo", e), warn=True, ranks=[gr.skip()] * self.slots)
        return self.ranking_view(rater_id, self.assigner.serve(rater_id, "ranking", a), shown,
                                 "Your last ranking was taken back; rank this set again.")

    # -- admin -----------------------------------------------------------------------------

    def admin(self, request: gr.Request) -> str:
        rater_id = self.rater(request)
        if not self.raters.is_admin(rater_id):
            e = UserError("This is for admins only.")
            raise gr.Error(self.refused(rater_id, "admin action", e), print_exception=False)
        return rater_id

    def admin_visible(self, request: gr.Request):
        username = getattr(request, "username", None)
        return gr.update(visible=self.raters.is_admin(username))

    def admin_report(self, request: gr.Request):
        """Summary, per-prompt pass rates (chart, table), answers per rater over time (chart,
        table), answers per rater, gold accuracy per rater, images withdrawn from serving, and the
        root's rounds (images, selected, labels, rankings, good share per round).  Each part is
        built alone: one that fails shows what failed in its place (logged with its traceback),
        and the others still show (an event that raises would mark every output "Error")."""
        self.admin(request)
        store = self.assigner.store
        rep = attempt(lambda: round_report(store))
        # The same per-prompt figures and default rule as `make targets` (data.targets), worst first.
        prompts = attempt(lambda: pick_targets(prompt_pass_rates(store)))
        parts = [
            ("summary", False, lambda: self.summary_html(rep())),
            ("per-prompt pass-rate chart", False, lambda: chart_html(
                pass_rate_chart(prompts()), "Per-prompt pass rates, worst first", "pass-rate-chart")),
            ("per-prompt table", True, lambda: prompts().assign(
                good_rate=prompts()["good_rate"].round(3),
                picked=prompts()["picked"].map({True: "target", False: ""}))),
            ("answers-over-time chart", False, lambda: chart_html(
                timeline_chart(rep().timeline), "Answers per rater over time", "timeline-chart")),
            ("answers-over-time table", True, lambda: timeline_table(rep().timeline)),
            ("answers per rater", True, lambda: rep().counts),
            ("gold accuracy", True, lambda: rep().gold),
            ("withdrawn images", True, lambda: withdrawn_table(self.assigner.withdrawn())),
            ("rounds", True, lambda: rounds_table(round_counts(store))),
        ]
        out = []
        for name, table, build in parts:
            try:
                out.append(build())
            except Exception as e:  # noqa: BLE001 - any failure of one part stays in that part
                log.exception("admin report: the %s failed", name)
                out.append(failed_part(name, e, table))
        return tuple(out)

    def summary_html(self, rep) -> str:
        """The admin tab's headline figures (``rep``: :func:`labeling_app.stats.round_report`)."""
        prog = self.assigner.progress("")

        def fmt(x, digits=3):
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

        rows = [
            ("round served", "n/a" if self.assigner.round is None else self.assigner.round),
            ("binary labels (current)", rep.binary_labels),
            ("rankings (current)", rep.rankings),
            ("undone (retracted) labels", rep.retracted),
            ("images withdrawn from serving (file changed; listed below)", len(self.assigner.withdrawn())),
            *[(f"round completion, {t}", pct(c)) for t, c in prog.round_completion.items()],
            ("agreement, binary: Krippendorff's alpha (items)",
             f"{fmt(rep.binary_agreement.alpha)} ({rep.binary_agreement.units})"),
            ("agreement, binary: raw pairwise agreement", fmt(rep.binary_agreement.percent)),
            ("agreement, ranking pairs: Krippendorff's alpha (pairs)",
             f"{fmt(rep.ranking_agreement.alpha)} ({rep.ranking_agreement.units})"),
            *[(f"median time per {t} answer (s)", fmt(ms / 1000, 1) if not math.isnan(ms) else "n/a")
              for t, ms in rep.median_ms.items()],
            ("guidelines version", self.guidelines.version),
        ]
        return ("<table>" + "".join(f"<tr><td>{esc(k)}</td><td><b>{esc(v)}</b></td></tr>" for k, v in rows)
                + "</table>")

    def marked_images(self, request: gr.Request):
        """The heatmap picker's choices: the images raters marked, most-marked first."""
        self.admin(request)
        return gr.update(choices=picker_choices(image_marks(self.assigner.store)), value=None)

    def marks_heatmap(self, image_id: str | None, request: gr.Request) -> str:
        """One marked image's averaged heatmap over it (:mod:`labeling_app.marks_admin`)."""
        self.admin(request)
        m = image_marks(self.assigner.store).get(image_id or "")
        if m is None or not m.marked:
            return status_html("Pick a marked image." if not image_id else f"No marks on {image_id}.")
        try:
            return heatmap_html(self.assigner.image_path(image_id), m)
        except UserError as e:
            return status_html(self.refused("admin", "heatmap", e), warn=True)

    def export(self, request: gr.Request):
        """Write an export under <root>/exports/ and link its zip through the admin-only route
        (never through Gradio's file cache, which serves any signed-in user who has the URL)."""
        self.admin(request)
        result = export_round(self.assigner.store)
        href = f"{EXPORT_ROUTE.lstrip('/')}/{result.directory.name}/{result.zip_path.name}"
        link = (f'<a id="export-link" href="{esc(href)}" download="{esc(result.zip_path.name)}">'
                f'Download {esc(result.zip_path.name)}</a>')
        return link, status_html(
            f"Exported {result.rows['binary_labels']} binary labels and {result.rows['rankings']} rankings "
            f"to {result.directory}.")
