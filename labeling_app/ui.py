"""The Gradio labeling app: the browser side of :class:`~labeling_app.assignment.Assigner`.

Everything a rater can do is one Gradio event whose handler takes the rater id from the login
session (``gr.Request.username``), never from the page.  An answer quotes the opaque token of the
item *the page shows*: the item's prompt carries it (``data-token``), and the page's script hands
it over only while that item's images are loaded and visible (:data:`HEAD`), so a key pressed
while no item is on screen does nothing and the server refuses an answer for an item the page
never displayed (or no longer displays).  A refused action is answered with its reason in the
tab's status line and the current item left in place, never with an error (Gradio marks every
output of an event that raises, which locks the tab); it logs one line.  Text that comes from
data (prompts, rater ids) is HTML-escaped before it reaches a ``gr.HTML`` component, which renders
raw HTML.  The API names (``/next_binary``, ``/good``, ``/bad``, ``/skip``, ``/undo_binary``,
``/next_ranking``, ``/submit_ranking``, ``/undo_ranking``, ``/admin_report``, ``/export``) are what
``gradio_client`` callers use; an answer's ``seen`` argument is the token (:func:`shown_token` of
the prompt output).
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import tempfile
from pathlib import Path

# Set before gradio is imported.  No usage analytics leave the machine.  Gradio's queue also
# recomputes a pandas summary of up to 10,000 past events after *every* event (for its monitoring
# page, which the app does not use): 6 ms and growing per request; recompute it every 500 events.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")

import gradio as gr  # noqa: E402

from core.errors import UserError
from data.store import Store
from data.targets import TargetRule, pick_targets, prompt_pass_rates
from labeling_app.assignment import Assigner
from labeling_app.charts import data_uri, pass_rate_chart, timeline_chart
from labeling_app.compactor import Compactor
from labeling_app.config import LabelConfig
from labeling_app.export import EXPORTS_DIR, export_round
from labeling_app.gold import read_gold
from labeling_app.guidelines import Guidelines, load_guidelines
from labeling_app.items import Assignment
from labeling_app.raters import LoginThrottle, RatersFile, make_auth
from labeling_app.stats import round_report
from labeling_app.web import EXPORT_ROUTE, LoginGuard, export_route

log = logging.getLogger("labeling_app")

# The page's side of "label only what is on screen".  labelingShown(task) is the token of the
# item the task's tab shows, or '' unless its prompt and every one of its images are rendered,
# loaded, visible and not covered (at the centre of their visible part).  It is read when an
# answer button is clicked, in the capture phase (before Gradio's own handler puts its loading
# overlay on the outputs), and the button's `js` sends it with the answer.  The keyboard shortcuts
# of the binary task (G good, B bad, S skip, U undo) do nothing without it, nor while typing in a
# text box, with a modifier key held, or when the binary tab is hidden.  Images smaller than their
# box are drawn with hard pixel edges (the 64 px renders), larger ones smoothly.
HEAD = """
<script>
(function () {
  function loaded(img) {
    if (!img || !img.complete || img.naturalWidth === 0 || img.offsetParent === null) return false;
    if (img.checkVisibility && !img.checkVisibility({opacityProperty: true, visibilityProperty: true})) return false;
    var r = img.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return false;
    var x0 = Math.max(r.left, 0), x1 = Math.min(r.right, window.innerWidth);
    var y0 = Math.max(r.top, 0), y1 = Math.min(r.bottom, window.innerHeight);
    if (x1 - x0 < 1 || y1 - y0 < 1) return true;  // scrolled out of view: seen, not covered
    return document.elementFromPoint((x0 + x1) / 2, (y0 + y1) / 2) === img;
  }
  window.labelingShown = function (task) {
    var p = document.querySelector('#' + task + '-prompt [data-token]');
    if (!p || p.offsetParent === null) return '';
    var n = parseInt(p.getAttribute('data-images') || '0', 10);
    for (var i = 0; i < n; i++) {
      var sel = task === 'binary' ? '#binary-image img' : '#rank-image-' + i + ' img';
      if (!loaded(document.querySelector(sel))) return '';
    }
    return n > 0 ? p.getAttribute('data-token') : '';
  };
  var seen = {binary: '', ranking: ''};
  var answers = {'btn-good': 'binary', 'btn-bad': 'binary', 'btn-skip': 'binary', 'btn-rank': 'ranking'};
  document.addEventListener('click', function (e) {
    for (var id in answers) {
      var b = document.getElementById(id);
      if (b && e.target instanceof Node && b.contains(e.target)) seen[answers[id]] = window.labelingShown(answers[id]);
    }
  }, true);
  window.labelingSeen = function (task) { var t = seen[task]; seen[task] = ''; return t; };
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
    var ids = {g: 'btn-good', b: 'btn-bad', s: 'btn-skip', u: 'btn-undo-binary'};
    var id = ids[(e.key || '').toLowerCase()];
    if (!id) return;
    var el = document.getElementById(id);
    if (!el || el.offsetParent === null || !window.labelingShown('binary')) return;
    var btn = el.tagName === 'BUTTON' ? el : el.querySelector('button');
    if (btn && !btn.disabled) { e.preventDefault(); btn.click(); }
  });
  document.addEventListener('load', function (e) {
    var img = e.target;
    if (img.tagName !== 'IMG' || !img.closest('.framed')) return;
    var r = img.getBoundingClientRect();
    img.classList.toggle('upscaled', img.naturalWidth < r.width || img.naturalHeight < r.height);
  }, true);
})();
</script>
"""

# Send the token taken at the click with an answer (the Python handlers' `seen` argument).
SEEN_BINARY_JS = "(reason, seen) => [reason, window.labelingSeen('binary')]"
SEEN_RANKING_JS = "(seen, ...rest) => [window.labelingSeen('ranking'), ...rest]"

CSS = """
.prompt-text { font-size: 1.5rem; font-weight: 600; padding: 0.5rem 0; white-space: pre-wrap; }
.status-text { min-height: 1.5rem; }
.status-text .warn { color: #b45309; font-weight: 600; }
.progress-text { font-size: 0.95rem; }
/* Any image size fits its box, scaled with its aspect kept; the box has a frame and a grey
   ground, so a white image still shows its edges on the white page. */
.framed img { width: 100%; height: 100%; object-fit: contain; box-sizing: border-box;
              border: 2px solid #6b7280; background: #d1d5db; }
.framed img.upscaled { image-rendering: pixelated; }
.admin-chart img { max-width: 100%; height: auto; border: 1px solid #d1d5db; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
"""

_TOKEN_RE = re.compile(r'data-token="([0-9a-f]+)"')


def shown_token(prompt_html: str | None) -> str:
    """The token of the item a prompt output shows ('' for none): what an answer quotes."""
    m = _TOKEN_RE.search(prompt_html or "")
    return m.group(1) if m else ""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def prompt_html(a: Assignment | None) -> str:
    """The prompt of an item, carrying its token and image count for the page's script."""
    if a is None:
        return '<div class="prompt-text">Nothing left to label here. Thank you!</div>'
    return (f'<div class="prompt-text" data-token="{esc(a.token)}" data-images="{len(a.item.image_ids)}">'
            f'{esc(a.item.prompt)}</div>')


def status_html(message: str = "", warn: bool = False) -> str:
    if not message:
        return '<div class="status-text"></div>'
    cls = ' class="warn"' if warn else ""
    return f'<div class="status-text"><span{cls}>{esc(message)}</span></div>'


def _pct(x: float) -> str:
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


def refusal_text(e: UserError) -> str:
    """What a rater reads when an action is refused: the problem and how to go on."""
    return e.problem if not e.fix else f"{e.problem} {e.fix[0].upper()}{e.fix[1:]}"


def nothing_shown() -> UserError:
    """The refusal of an answer sent while the page showed no item (a fresh one per request:
    an exception instance carries its traceback, so threads must not share one)."""
    return UserError("no item was on your screen (still loading, or hidden), so nothing was saved.",
                     "answer once the image is shown.")


class LabelingApp:
    """Handlers bound to one round; :meth:`build` lays out the Blocks."""

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
        rnd = " · ".join(f"{'images' if t == 'binary' else 'rankings'} {_pct(c)}"
                         for t, c in p.round_completion.items())
        return (f'<div class="progress-text">Signed in as <b>{esc(rater_id)}</b> · '
                f'your answers: {esc(own)} · round complete: {esc(rnd)} · '
                f'<a href="logout">sign out</a></div>')

    # -- binary ----------------------------------------------------------------------------

    def binary_view(self, rater_id: str, a: Assignment | None, message: str = "", warn: bool = False,
                    reason=""):
        """Outputs of the binary tab: image, prompt, status, progress, skip reason."""
        image = str(self.assigner.image_path(a.item.image_ids[0])) if a else None
        return image, prompt_html(a), status_html(message, warn), self.progress_html(rater_id), reason

    def binary_refused(self, rater_id: str, action: str, e: UserError, reason=gr.skip()):
        """The rater's current item again, with the reason the action was refused."""
        return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"),
                                self.refused(rater_id, action, e), warn=True, reason=reason)

    def next_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"))

    def answer_binary(self, label: str, reason: str, seen: str | None, request: gr.Request):
        """``seen``: the token of the item the page showed ('' when it showed none)."""
        rater_id = self.rater(request)
        try:
            if not seen:
                raise nothing_shown()
            self.assigner.submit_binary(rater_id, seen, label, reason)
        except UserError as e:
            return self.binary_refused(rater_id, label, e)
        return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"), f"Saved: {label}.")

    def _answer_fn(self, label: str):
        # Gradio passes gr.Request only to a positional parameter annotated with it.
        def answer(reason: str, seen: str, request: gr.Request):
            return self.answer_binary(label, reason, seen, request)
        answer.__name__ = f"answer_{label}"
        return answer

    def undo_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "binary")
        except UserError as e:
            return self.binary_refused(rater_id, "undo", e)
        a = a or self.assigner.current(rater_id, "binary")
        return self.binary_view(rater_id, a, "Your last answer was taken back; answer this image again.")

    # -- ranking ---------------------------------------------------------------------------

    def ranking_view(self, rater_id: str, a: Assignment | None, shown: int, message: str = "",
                     warn: bool = False, ranks=None):
        """Outputs of the ranking tab.  ``shown``: how many image slots the page shows now.  Only
        when that changes are the slots re-configured (gr.update makes Gradio rebuild and re-send
        component configs: ~70 ms of server CPU for a ranking answer, against ~5 ms for values).
        ``ranks``: the selectors' values to keep (a refused ranking stays on the page to fix)."""
        ids = a.item.image_ids if a else ()
        n = len(ids)
        paths = [str(self.assigner.image_path(i)) for i in ids] + [None] * (self.slots - n)
        if n == shown:
            images, ranks = paths, list(ranks) if ranks is not None else [None] * self.slots
        else:
            images = [gr.update(value=paths[i], visible=i < n) for i in range(self.slots)]
            ranks = [gr.update(choices=list(range(1, n + 1)), value=None, visible=i < n)
                     for i in range(self.slots)]
        return (prompt_html(a), *images, *ranks, status_html(message, warn), self.progress_html(rater_id), n)

    def next_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown)

    def submit_ranking(self, request: gr.Request, seen: str | None, shown: int, *ranks):
        """``seen``: the token of the set the page showed; ``ranks``: the rank selectors."""
        rater_id = self.rater(request)
        try:
            if not seen:
                raise nothing_shown()
            self.assigner.submit_ranking(rater_id, seen, list(ranks))
        except UserError as e:
            a = self.assigner.current(rater_id, "ranking")
            keep = ranks if a is not None and a.token == seen else None  # the same set: keep the choices
            return self.ranking_view(rater_id, a, shown, self.refused(rater_id, "ranking", e), warn=True, ranks=keep)
        return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown, "Saved your ranking.")

    def undo_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "ranking")
        except UserError as e:
            return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown,
                                     self.refused(rater_id, "undo", e), warn=True, ranks=[gr.skip()] * self.slots)
        a = a or self.assigner.current(rater_id, "ranking")
        return self.ranking_view(rater_id, a, shown, "Your last ranking was taken back; rank this set again.")

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
        table), answers per rater, gold accuracy per rater."""
        self.admin(request)
        rep = round_report(self.assigner.store, read_gold(self.assigner.store))
        prog = self.assigner.progress("")

        def fmt(x, digits=3):
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

        rows = [
            ("binary labels (current)", rep.binary_labels),
            ("rankings (current)", rep.rankings),
            ("undone (retracted) labels", rep.retracted),
            *[(f"round completion, {t}", _pct(c)) for t, c in prog.round_completion.items()],
            ("agreement, binary: Krippendorff's alpha (items)",
             f"{fmt(rep.binary_agreement.alpha)} ({rep.binary_agreement.units})"),
            ("agreement, binary: raw pairwise agreement", fmt(rep.binary_agreement.percent)),
            ("agreement, ranking pairs: Krippendorff's alpha (pairs)",
             f"{fmt(rep.ranking_agreement.alpha)} ({rep.ranking_agreement.units})"),
            *[(f"median time per {t} answer (s)", fmt(ms / 1000, 1) if not math.isnan(ms) else "n/a")
              for t, ms in rep.median_ms.items()],
            ("guidelines version", self.guidelines.version),
        ]
        summary = ("<table>" + "".join(f"<tr><td>{esc(k)}</td><td><b>{esc(v)}</b></td></tr>" for k, v in rows)
                   + "</table>")
        # The same per-prompt figures and default rule as `make targets` (data.targets), worst first.
        prompts = pick_targets(prompt_pass_rates(self.assigner.store))
        chart = chart_html(pass_rate_chart(prompts), "Per-prompt pass rates, worst first", "pass-rate-chart")
        prompts = prompts.assign(good_rate=prompts["good_rate"].round(3),
                                 picked=prompts["picked"].map({True: "target", False: ""}))
        timeline = chart_html(timeline_chart(rep.timeline), "Answers per rater over time", "timeline-chart")
        return summary, chart, prompts, timeline, timeline_table(rep.timeline), rep.counts, rep.gold

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

    # -- layout ----------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        tasks = self.cfg.tasks
        with gr.Blocks(title="Labeling") as demo:
            progress = gr.HTML(elem_id="progress", js_on_load=None)
            gr.Markdown("The **guidelines** are in the panel on the right (open it with the arrow); "
                        f"they are version {self.guidelines.version}.", elem_id="guidelines-hint")
            with gr.Sidebar(label="Guidelines", open=False, position="right"):
                gr.Markdown(f"### Guidelines\n*version {self.guidelines.version}*")
                gr.Markdown(self.guidelines.text)
            with gr.Tabs():
                if "binary" in tasks:
                    with gr.Tab("Does it match?", id="binary"):
                        b_seen = gr.Textbox(visible=False)  # filled by SEEN_BINARY_JS at each answer
                        with gr.Row():
                            with gr.Column(scale=3):
                                b_image = gr.Image(type="filepath", interactive=False, show_label=False,
                                                   buttons=[], height=384, elem_id="binary-image",
                                                   elem_classes=["framed"])
                            with gr.Column(scale=2):
                                gr.Markdown("Does the image show what this prompt asks for?")
                                b_prompt = gr.HTML(elem_id="binary-prompt", js_on_load=None)
                                with gr.Row():
                                    good = gr.Button("Good (G)", variant="primary", elem_id="btn-good")
                                    bad = gr.Button("Bad (B)", variant="stop", elem_id="btn-bad")
                                    skip = gr.Button("Skip (S)", elem_id="btn-skip")
                                reason = gr.Textbox(label="Reason for skipping (optional)", max_lines=2,
                                                    max_length=500, elem_id="skip-reason")
                                undo_b = gr.Button("Undo last answer (U)", size="sm", elem_id="btn-undo-binary")
                                b_status = gr.HTML(elem_id="binary-status", js_on_load=None)
                        b_out = [b_image, b_prompt, b_status, progress, reason]
                        for btn, label in ((good, "good"), (bad, "bad"), (skip, "skip")):
                            btn.click(self._answer_fn(label), inputs=[reason, b_seen], outputs=b_out,
                                      api_name=label, trigger_mode="once", js=SEEN_BINARY_JS)
                        undo_b.click(self.undo_binary, outputs=b_out, api_name="undo_binary", trigger_mode="once")
                        demo.load(self.next_binary, outputs=b_out, api_name="next_binary")
                if "ranking" in tasks:
                    with gr.Tab("Rank", id="ranking"):
                        r_seen = gr.Textbox(visible=False)  # filled by SEEN_RANKING_JS at a submit
                        r_shown = gr.State(-1)  # image slots the page shows (-1: not configured yet)
                        gr.Markdown("Rank these images for the prompt: **1 is best**. Equally good images "
                                    "share a rank; do not skip a number (1, 1, 2 is fine; 1, 1, 3 is not).")
                        r_prompt = gr.HTML(elem_id="ranking-prompt", js_on_load=None)
                        r_images, r_ranks = [], []
                        with gr.Row():
                            for i in range(self.slots):
                                with gr.Column(min_width=140):
                                    r_images.append(gr.Image(type="filepath", interactive=False, show_label=False,
                                                             buttons=[], height=200, elem_id=f"rank-image-{i}",
                                                             elem_classes=["framed"]))
                                    r_ranks.append(gr.Radio(choices=[], label=f"Image {i + 1}",
                                                            elem_id=f"rank-{i}"))
                        with gr.Row():
                            submit_r = gr.Button("Submit ranking", variant="primary", elem_id="btn-rank")
                            undo_r = gr.Button("Undo last ranking", size="sm", elem_id="btn-undo-ranking")
                        r_status = gr.HTML(elem_id="ranking-status", js_on_load=None)
                        r_out = [r_prompt, *r_images, *r_ranks, r_status, progress, r_shown]
                        submit_r.click(self.submit_ranking, inputs=[r_seen, r_shown, *r_ranks], outputs=r_out,
                                       api_name="submit_ranking", trigger_mode="once", js=SEEN_RANKING_JS)
                        undo_r.click(self.undo_ranking, inputs=r_shown, outputs=r_out, api_name="undo_ranking",
                                     trigger_mode="once")
                        demo.load(self.next_ranking, inputs=r_shown, outputs=r_out, api_name="next_ranking")
                with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                    refresh = gr.Button("Refresh statistics", elem_id="btn-admin-refresh")
                    summary = gr.HTML(js_on_load=None, elem_id="admin-summary")
                    rule = TargetRule()
                    gr.Markdown("**Per-prompt pass rates**, worst first: the raters' good-rate (majority per "
                                "image), what to fix next. *target* marks the prompts `make targets` would "
                                "pick to fine-tune on (good-rate in "
                                f"({rule.min_good_rate:g}, {rule.max_good_rate:g}], at least "
                                f"{rule.min_images} labelled images, at most {rule.max_targets}).")
                    pass_chart = gr.HTML(js_on_load=None, elem_id="admin-pass-chart")
                    per_prompt = gr.Dataframe(interactive=False, max_height=400, elem_id="admin-per-prompt")
                    gr.Markdown("**Answers per rater over time** (binary labels, skips included, and rankings)")
                    timeline = gr.HTML(js_on_load=None, elem_id="admin-timeline-chart")
                    timeline_df = gr.Dataframe(interactive=False, max_height=300, elem_id="admin-timeline")
                    gr.Markdown("**Answers per rater**")
                    counts = gr.Dataframe(interactive=False, elem_id="admin-counts")
                    gr.Markdown("**Gold accuracy per rater** (gold items are mixed in unannounced)")
                    gold = gr.Dataframe(interactive=False)
                    export_btn = gr.Button("Export labels (Parquet + summary, zipped)", elem_id="btn-export")
                    export_link = gr.HTML(js_on_load=None, elem_id="export-download")
                    export_status = gr.HTML(js_on_load=None)
                    report = [summary, pass_chart, per_prompt, timeline, timeline_df, counts, gold]
                    refresh.click(self.admin_report, outputs=report, api_name="admin_report")
                    admin_tab.select(self.admin_report, outputs=report, api_visibility="private")
                    export_btn.click(self.export, outputs=[export_link, export_status], api_name="export",
                                     trigger_mode="once")
            demo.load(self.admin_visible, outputs=admin_tab, api_visibility="private")
        return demo


def allowed_image_paths(root: Path) -> list[str]:
    """Gradio copies an image a handler returns into its cache only from the working directory,
    the temp directory or ``allowed_paths``; name the round's images folder only when it is
    elsewhere (allowed paths are also served directly to signed-in users)."""
    images = (root / "images").resolve()
    for base in (Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()):
        if images.is_relative_to(base):
            return []
    return [str(images)]


AUTH_MESSAGE = "Sign in with the rater name and password your project lead gave you."


def build_app(cfg: LabelConfig) -> LabelingApp:
    """The app of a round as configured (checks the raters file, guidelines and round first)."""
    raters = RatersFile(cfg.raters_file)
    if not any(not a.disabled for a in raters.accounts()):
        raise UserError(f"no enabled rater in {cfg.raters_file}, so nobody could sign in.",
                        "add one: `make rater-add RATER=alice ADMIN=1` (ADMIN=1 for the lead).")
    guidelines = load_guidelines(cfg.guidelines_path)
    # Merging small part files happens in a background thread (launch), not inside a rater's
    # request.
    assigner = Assigner.open(cfg, guidelines.version, store=Store(cfg.root, compact_every=0))
    return LabelingApp(cfg, assigner, raters, guidelines)


def launch(app: LabelingApp, *, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve ``app`` on the configured host and port behind the raters' login (our login page
    and throttle in front of Gradio's login route, and the admin-only export download route)."""
    from starlette.middleware import Middleware

    cfg = app.cfg
    root = Path(cfg.root)
    demo = app.build()
    demo.queue(default_concurrency_limit=cfg.server.concurrency)
    if app.assigner.store.compact_every == 0:
        app.compactor = Compactor(app.assigner.store)
        app.compactor.start()
    # Routes and middleware given to the FastAPI app at creation come before Gradio's own.
    app_kwargs = {"routes": [export_route(root, app.raters)],
                  "middleware": [Middleware(LoginGuard, throttle=LoginThrottle(cfg.login), message=AUTH_MESSAGE)]}
    return demo, demo.launch(
        server_name=cfg.server.host, server_port=cfg.server.port,
        auth=make_auth(app.raters), auth_message=AUTH_MESSAGE,
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
        max_threads=max(40, cfg.server.concurrency), allowed_paths=allowed_image_paths(root),
        blocked_paths=[str((root / EXPORTS_DIR).resolve()), str(app.raters.path.resolve())],
        footer_links=[], ssr_mode=False, head=HEAD, css=CSS, theme=gr.themes.Soft(),
        enable_monitoring=False, mcp_server=False, app_kwargs=app_kwargs,
    )
