"""The Gradio labeling app: the browser side of :class:`~labeling_app.assignment.Assigner`.

Everything a rater can do is one Gradio event whose handler takes the rater id from the login
session (``gr.Request.username``), never from the page; the item an answer is for is the opaque
token of the rater's current item, kept in server-side session state.  Text that comes from data
(prompts, rater ids) is HTML-escaped before it reaches a ``gr.HTML`` component, which renders raw
HTML.  The API names (``/next_binary``, ``/good``, ``/bad``, ``/skip``, ``/undo_binary``,
``/next_ranking``, ``/submit_ranking``, ``/undo_ranking``, ``/admin_report``, ``/export``) are what
``gradio_client`` callers use.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from pathlib import Path

# Set before gradio is imported.  No usage analytics leave the machine.  Gradio's queue also
# recomputes a pandas summary of up to 10,000 past events after *every* event (for its monitoring
# page, which the app does not use): 6 ms and growing per request; recompute it every 500 events.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")

import gradio as gr  # noqa: E402

from data.errors import UserError
from data.targets import TargetRule, pick_targets, prompt_pass_rates
from labeling_app.assignment import Assigner, Assignment, Compactor, StaleItem
from labeling_app.config import LabelConfig
from labeling_app.export import export_round
from labeling_app.gold import read_gold
from labeling_app.guidelines import Guidelines
from labeling_app.raters import LoginThrottle, RatersFile, make_auth
from labeling_app.stats import round_report

# Keyboard shortcuts of the binary task: G good, B bad, S skip, U undo.  Ignored while typing in
# a text box, with a modifier key held, or when the binary tab is hidden.
HEAD = """
<script>
document.addEventListener('keydown', function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  var t = e.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
  var ids = {g: 'btn-good', b: 'btn-bad', s: 'btn-skip', u: 'btn-undo-binary'};
  var id = ids[(e.key || '').toLowerCase()];
  if (!id) return;
  var el = document.getElementById(id);
  if (!el || el.offsetParent === null) return;
  var btn = el.tagName === 'BUTTON' ? el : el.querySelector('button');
  if (btn && !btn.disabled) { e.preventDefault(); btn.click(); }
});
</script>
"""

CSS = """
.prompt-text { font-size: 1.5rem; font-weight: 600; padding: 0.5rem 0; white-space: pre-wrap; }
.status-text { min-height: 1.5rem; }
.status-text .warn { color: #b45309; }
.progress-text { font-size: 0.95rem; }
/* renders are small (64 px): scale them up without blurring */
.pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def prompt_html(prompt: str | None) -> str:
    if prompt is None:
        return '<div class="prompt-text">Nothing left to label here. Thank you!</div>'
    return f'<div class="prompt-text">{esc(prompt)}</div>'


def status_html(message: str = "", warn: bool = False) -> str:
    if not message:
        return '<div class="status-text"></div>'
    cls = ' class="warn"' if warn else ""
    return f'<div class="status-text"><span{cls}>{esc(message)}</span></div>'


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


class LabelingApp:
    """Handlers bound to one round; :meth:`build` lays out the Blocks."""

    def __init__(self, cfg: LabelConfig, assigner: Assigner, raters: RatersFile, guidelines: Guidelines):
        self.cfg = cfg
        self.assigner = assigner
        self.raters = raters
        self.guidelines = guidelines
        self.slots = cfg.rank_max_images

    # -- session ---------------------------------------------------------------------------

    def rater(self, request: gr.Request | None) -> str:
        """The signed-in rater; refuses a disabled or unknown account even with a live session."""
        username = getattr(request, "username", None) if request is not None else None
        if not username or not self.raters.is_active(username):
            raise gr.Error("You are not signed in (or your account was disabled). Reload the page to sign in.")
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

    def binary_view(self, rater_id: str, a: Assignment | None, message: str = "", warn: bool = False):
        image = str(self.assigner.image_path(a.item.image_ids[0])) if a else None
        return (image, prompt_html(a.item.prompt if a else None), status_html(message, warn),
                self.progress_html(rater_id), a.token if a else None, "")

    def next_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"))

    def answer_binary(self, label: str, reason: str, token: str | None, request: gr.Request):
        rater_id = self.rater(request)
        try:
            self.assigner.submit_binary(rater_id, token, label, reason)
        except StaleItem as e:
            return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"), str(e), warn=True)
        except UserError as e:
            raise gr.Error(str(e)) from None
        return self.binary_view(rater_id, self.assigner.current(rater_id, "binary"), f"Saved: {label}.")

    def _answer_fn(self, label: str):
        # Gradio passes gr.Request only to a positional parameter annotated with it.
        def answer(reason: str, token: str | None, request: gr.Request):
            return self.answer_binary(label, reason, token, request)
        answer.__name__ = f"answer_{label}"
        return answer

    def undo_binary(self, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "binary")
        except UserError as e:
            raise gr.Error(str(e)) from None
        a = a or self.assigner.current(rater_id, "binary")
        return self.binary_view(rater_id, a, "Your last answer was taken back; answer this image again.")

    # -- ranking ---------------------------------------------------------------------------

    def ranking_view(self, rater_id: str, a: Assignment | None, shown: int, message: str = "",
                     warn: bool = False):
        """Outputs of the ranking tab.  ``shown``: how many image slots the page shows now.  Only
        when that changes are the slots re-configured (gr.update makes Gradio rebuild and re-send
        component configs: ~70 ms of server CPU for a ranking answer, against ~5 ms for values)."""
        ids = a.item.image_ids if a else ()
        n = len(ids)
        paths = [str(self.assigner.image_path(i)) for i in ids] + [None] * (self.slots - n)
        if n == shown:
            images, ranks = paths, [None] * self.slots
        else:
            images = [gr.update(value=paths[i], visible=i < n) for i in range(self.slots)]
            ranks = [gr.update(choices=list(range(1, n + 1)), value=None, visible=i < n)
                     for i in range(self.slots)]
        return (prompt_html(a.item.prompt if a else None), *images, *ranks, status_html(message, warn),
                self.progress_html(rater_id), a.token if a else None, n)

    def next_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown)

    def submit_ranking(self, values: dict, request: gr.Request):
        """``values``: the rank selectors and the session states, keyed by component (set inputs)."""
        rater_id = self.rater(request)
        ranks = [values[r] for r in self._rank_inputs]
        token, shown = values[self._rank_token], values[self._rank_shown]
        try:
            self.assigner.submit_ranking(rater_id, token, list(ranks))
        except StaleItem as e:
            return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown, str(e), warn=True)
        except UserError as e:
            raise gr.Error(str(e)) from None
        return self.ranking_view(rater_id, self.assigner.current(rater_id, "ranking"), shown, "Saved your ranking.")

    def undo_ranking(self, shown: int, request: gr.Request):
        rater_id = self.rater(request)
        try:
            a = self.assigner.undo(rater_id, "ranking")
        except UserError as e:
            raise gr.Error(str(e)) from None
        a = a or self.assigner.current(rater_id, "ranking")
        return self.ranking_view(rater_id, a, shown, "Your last ranking was taken back; rank this set again.")

    # -- admin -----------------------------------------------------------------------------

    def admin(self, request: gr.Request) -> str:
        rater_id = self.rater(request)
        if not self.raters.is_admin(rater_id):
            raise gr.Error("This is for admins only.")
        return rater_id

    def admin_visible(self, request: gr.Request):
        username = getattr(request, "username", None)
        return gr.update(visible=self.raters.is_admin(username))

    def admin_report(self, request: gr.Request):
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
        # The same per-prompt figures and default rule as `make targets` (data.targets).
        prompts = pick_targets(prompt_pass_rates(self.assigner.store))
        prompts = prompts.assign(good_rate=prompts["good_rate"].round(3),
                                 picked=prompts["picked"].map({True: "target", False: ""}))
        return summary, rep.counts, rep.gold, prompts

    def export(self, request: gr.Request):
        self.admin(request)
        result = export_round(self.assigner.store)
        return str(result.zip_path), status_html(
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
                        b_token = gr.State(None)
                        with gr.Row():
                            with gr.Column(scale=3):
                                b_image = gr.Image(type="filepath", interactive=False, show_label=False,
                                                   buttons=[], height=384, elem_id="binary-image",
                                                   elem_classes=["pixelated"])
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
                        b_out = [b_image, b_prompt, b_status, progress, b_token, reason]
                        for btn, label in ((good, "good"), (bad, "bad"), (skip, "skip")):
                            btn.click(self._answer_fn(label), inputs=[reason, b_token], outputs=b_out,
                                      api_name=label, trigger_mode="once")
                        undo_b.click(self.undo_binary, outputs=b_out, api_name="undo_binary", trigger_mode="once")
                        demo.load(self.next_binary, outputs=b_out, api_name="next_binary")
                if "ranking" in tasks:
                    with gr.Tab("Rank", id="ranking"):
                        r_token = gr.State(None)
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
                                                             elem_classes=["pixelated"]))
                                    r_ranks.append(gr.Radio(choices=[], label=f"Image {i + 1}",
                                                            elem_id=f"rank-{i}"))
                        with gr.Row():
                            submit_r = gr.Button("Submit ranking", variant="primary", elem_id="btn-rank")
                            undo_r = gr.Button("Undo last ranking", size="sm", elem_id="btn-undo-ranking")
                        r_status = gr.HTML(elem_id="ranking-status", js_on_load=None)
                        r_out = [r_prompt, *r_images, *r_ranks, r_status, progress, r_token, r_shown]
                        self._rank_inputs, self._rank_token, self._rank_shown = r_ranks, r_token, r_shown
                        submit_r.click(self.submit_ranking, inputs={*r_ranks, r_token, r_shown}, outputs=r_out,
                                       api_name="submit_ranking", trigger_mode="once")
                        undo_r.click(self.undo_ranking, inputs=r_shown, outputs=r_out, api_name="undo_ranking",
                                     trigger_mode="once")
                        demo.load(self.next_ranking, inputs=r_shown, outputs=r_out, api_name="next_ranking")
                with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                    refresh = gr.Button("Refresh statistics", elem_id="btn-admin-refresh")
                    summary = gr.HTML(js_on_load=None)
                    gr.Markdown("**Answers per rater**")
                    counts = gr.Dataframe(interactive=False)
                    gr.Markdown("**Gold accuracy per rater** (gold items are mixed in unannounced)")
                    gold = gr.Dataframe(interactive=False)
                    rule = TargetRule()
                    gr.Markdown("**Per-prompt pass rates**, worst first: the raters' good-rate (majority per "
                                "image). *target* marks the prompts `make targets` would pick to fine-tune on "
                                f"(good-rate in ({rule.min_good_rate:g}, {rule.max_good_rate:g}], at least "
                                f"{rule.min_images} labelled images, at most {rule.max_targets}).")
                    per_prompt = gr.Dataframe(interactive=False, max_height=400)
                    export_btn = gr.Button("Export labels (Parquet + summary, zipped)", elem_id="btn-export")
                    export_file = gr.File(label="Export", interactive=False, height=90)
                    export_status = gr.HTML(js_on_load=None)
                    report = [summary, counts, gold, per_prompt]
                    refresh.click(self.admin_report, outputs=report, api_name="admin_report")
                    admin_tab.select(self.admin_report, outputs=report, api_visibility="private")
                    export_btn.click(self.export, outputs=[export_file, export_status], api_name="export",
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


def launch(app: LabelingApp, *, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve ``app`` on the configured host and port behind the raters' login."""
    cfg = app.cfg
    demo = app.build()
    demo.queue(default_concurrency_limit=cfg.server.concurrency)
    if app.assigner.store.compact_every == 0:
        app.compactor = Compactor(app.assigner.store)
        app.compactor.start()
    return demo, demo.launch(
        server_name=cfg.server.host, server_port=cfg.server.port,
        auth=make_auth(app.raters, LoginThrottle()),
        auth_message="Sign in with the rater name and password your project lead gave you.",
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
        max_threads=max(40, cfg.server.concurrency), allowed_paths=allowed_image_paths(Path(cfg.root)),
        footer_links=[], ssr_mode=False, head=HEAD, css=CSS, theme=gr.themes.Soft(),
        enable_monitoring=False, mcp_server=False,
    )
