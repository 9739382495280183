"""The Gradio labeling app: the browser side of :class:`~labeling_app.assignment.Assigner`.

:class:`LabelingApp` lays out the Blocks (a binary tab, a ranking tab, an admin tab) over the event
handlers of :class:`~labeling_app.handlers.LabelingHandlers`; :func:`build_app` and :func:`launch`
make and serve the app of a round behind the raters' login.  The API names (``/next_binary``,
``/good``, ``/bad``, ``/skip``, ``/undo_binary``, ``/next_ranking``, ``/submit_ranking``,
``/undo_ranking``, ``/admin_report``, ``/export``) are what ``gradio_client`` callers use; an
answer's ``seen`` argument is the token (:func:`labeling_app.views.shown_token` of the prompt
output); its optional ``marks`` argument, the marks of a bad answer as JSON
(:mod:`labeling_app.marking`: ``{"points": [[x, y], ...], "words": [i, ...]}``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

# First: labeling_app.handlers sets the environment Gradio reads when it is imported (no analytics).
from labeling_app.handlers import LabelingHandlers

import gradio as gr

from core.errors import UserError
from data.schemas import GENERATIONS, GOLD, SELECTIONS
from data.store import Store
from data.targets import TargetRule
from labeling_app.assignment import Assigner
from labeling_app.compactor import Compactor, merge_leftovers
from labeling_app.config import LabelConfig
from labeling_app.export import EXPORTS_DIR
from labeling_app.gold import ensure_gold
from labeling_app.guidelines import guidelines_file, load_guidelines
from labeling_app.marking import BINARY_ANSWER_JS, MARKS_CSS, MARKS_HEAD
from labeling_app.rounds import served_round, shapes_prompts
from labeling_app.page import CSS, HEAD, LOADING_NOTE, SEEN_RANKING_JS
from labeling_app.raters import LoginThrottle, RatersFile, make_auth
from labeling_app.web import APP_KWARGS, LoginGuard, NoUploads, export_route, trusting_proxies


class LabelingApp(LabelingHandlers):
    """Handlers bound to one round; :meth:`build` lays out the Blocks."""

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
                        b_seen = gr.Textbox(visible=False)  # filled by BINARY_ANSWER_JS at each answer
                        b_marks = gr.Textbox(visible=False)  # the page's marks, filled likewise
                        with gr.Row():
                            with gr.Column(scale=3):
                                b_image = gr.Image(type="filepath", interactive=False, show_label=False,
                                                   buttons=[], height=384, elem_id="binary-image",
                                                   elem_classes=["framed"])
                                gr.HTML(LOADING_NOTE.format(what="image"), elem_id="binary-loading", js_on_load=None)
                            with gr.Column(scale=2):
                                gr.Markdown("Does the image show what this prompt asks for?")
                                b_prompt = gr.HTML(elem_id="binary-prompt", js_on_load=None)
                                with gr.Row():
                                    good = gr.Button("Good (G)", variant="primary", elem_id="btn-good")
                                    bad = gr.Button("Bad (B)", variant="stop", elem_id="btn-bad")
                                    skip = gr.Button("Skip (S)", elem_id="btn-skip")
                                reason = gr.Textbox(label="Reason for skipping (optional)" if self.cfg.marks == "off" else
                                                    "Reason for skipping, or why nothing can be marked (optional)",
                                                    max_lines=2,
                                                    max_length=500, elem_id="skip-reason")
                                undo_b = gr.Button("Undo last answer (U)", size="sm", elem_id="btn-undo-binary")
                                b_status = gr.HTML(elem_id="binary-status", js_on_load=None)
                        b_out = [b_image, b_prompt, b_status, progress, reason]
                        for btn, label in ((good, "good"), (bad, "bad"), (skip, "skip")):
                            btn.click(self._answer_fn(label), inputs=[reason, b_seen, b_marks], outputs=b_out,
                                      api_name=label, trigger_mode="once", js=BINARY_ANSWER_JS)
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
                        gr.HTML(LOADING_NOTE.format(what="images"), elem_id="ranking-loading", js_on_load=None)
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
                    gr.Markdown("**Rounds** of this dataset root, newest first: images, images selected for "
                                "raters (0: every image is served), current labels and rankings on its images, "
                                "and the good share of its binary answers (skips left out).")
                    rounds = gr.Dataframe(interactive=False, elem_id="admin-rounds")
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
                    gr.Markdown("**Gold accuracy per rater** (gold items are mixed in unannounced; with "
                                "reference marks, the share of a rater's clicks near them and their words' overlap)")
                    gold = gr.Dataframe(interactive=False, elem_id="admin-gold")
                    gr.Markdown("**Images withdrawn from serving**: their file no longer matches its "
                                "generations row (replaced, edited or removed), so their items are no longer "
                                "handed out.  Restore the file (or bring the new one in with `make import`) and "
                                "restart the app to serve them again.")
                    withdrawn = gr.Dataframe(interactive=False, elem_id="admin-withdrawn")
                    gr.Markdown("**Where raters marked images wrong**: pick a marked image to see its raters' "
                                "averaged heatmap over it (RichHF disks; red: the share of its raters who "
                                "clicked there) and how many marked each word.")
                    marks_pick = gr.Dropdown(choices=[], label="Marked image", elem_id="admin-marks-pick")
                    marks_view = gr.HTML(js_on_load=None, elem_id="admin-marks-heatmap")
                    export_btn = gr.Button("Export labels (Parquet + summary, zipped)", elem_id="btn-export")
                    export_link = gr.HTML(js_on_load=None, elem_id="export-download")
                    export_status = gr.HTML(js_on_load=None)
                    report = [summary, pass_chart, per_prompt, timeline, timeline_df, counts, gold, withdrawn, rounds]
                    refresh.click(self.admin_report, outputs=report, api_name="admin_report")
                    admin_tab.select(self.admin_report, outputs=report, api_visibility="private")
                    for event in (refresh.click, admin_tab.select):
                        event(self.marked_images, outputs=marks_pick, api_visibility="private")
                    marks_pick.change(self.marks_heatmap, inputs=marks_pick, outputs=marks_view,
                                      api_visibility="private")
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
    store = Store(cfg.root, compact_every=0)
    served = served_round(store, cfg.round)  # read only: the guidelines follow the round's prompts
    guidelines = load_guidelines(guidelines_file(cfg.guidelines, shapes_prompts(served.images)))
    # Merging small part files happens here, before the round is read, and then in a background
    # thread (launch), never inside a rater's request.  The tables the merge leaves alone are read
    # first, and the gold pool is checked (a gold file, oracle gold on other prompts) and made on
    # first use, so a bad part or a bad gold file is refused before any label table is rewritten.
    for spec in (GENERATIONS, SELECTIONS, GOLD):
        store.read(spec)
    if cfg.uses_gold:
        ensure_gold(store, cfg.gold, served.images, seed=cfg.seed)  # Assigner.open reads it back
    merge_leftovers(store)
    assigner = Assigner.open(cfg, guidelines.version, store=store)
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
    app_kwargs = {**APP_KWARGS, "routes": [export_route(root, app.raters)],
                  "middleware": [Middleware(NoUploads),
                                 Middleware(LoginGuard, throttle=LoginThrottle(cfg.login), message=AUTH_MESSAGE)]}
    with trusting_proxies(cfg.server.trusted_proxies):
        return demo, demo.launch(
            server_name=cfg.server.host, server_port=cfg.server.port,
            auth=make_auth(app.raters), auth_message=AUTH_MESSAGE,
            prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
            max_threads=max(40, cfg.server.concurrency), allowed_paths=allowed_image_paths(root),
            blocked_paths=[str((root / EXPORTS_DIR).resolve()), str(app.raters.path.resolve())],
            # NoUploads refuses uploads first; a limit of 0 bytes stops any Gradio would still take.
            max_file_size=0,
            footer_links=[], ssr_mode=False, head=HEAD + MARKS_HEAD, css=CSS + MARKS_CSS, theme=gr.themes.Soft(),
            enable_monitoring=False, mcp_server=False, app_kwargs=app_kwargs,
            # Gradio's run history (/gradio_api/runs, a page listing every named endpoint, and a
            # copy of each answer in the browser's storage): raters never need it.
            run_history=False,
        )
