"""End to end in a real browser: Playwright driving Debian's Chromium against a live app.

Sign in, label with the keyboard, rank; refused actions leave the item usable; a label is stored
only for the item on screen; exports reach admins only; the admin tab; the login throttle's
message; images of any size fit their frames.  Skips (with the reason) without Chromium: browsers
cannot be downloaded here, so the tests use the system one (`apt-get install chromium`; .ci/run
installs it).  Set LABELING_SCREENSHOT=<file.png> to save a screenshot of the binary task (the
README's picture).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from data.labels import current
from labeling_app.config import LoginConfig
from tests.labeling_server import HOSTILE_PROMPT, PASSWORD, label_config, make_raters, make_round, serve

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1280, "height": 860}

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) or set "
                "CHROMIUM=<path>; Playwright's own browsers cannot be downloaded here",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One round for the module's tests; wrong passwords wait 30 s once past the free tries (so
    the throttle's message is still up when the test reads it)."""
    root = tmp_path_factory.mktemp("browser") / "round"
    store = make_round(root, n_prompts=4, per_prompt=3)
    raters = make_raters(root / "raters.json", ["rita", "newbie", "lead"], admins=("lead",))
    cfg = label_config(root, raters, login=LoginConfig(base_delay_s=30, max_delay_s=60))
    with serve(cfg) as (labeling_app, url):
        yield store, url


def sign_in(browser, url: str, name: str, password: str = PASSWORD):
    page = browser.new_context(viewport=VIEWPORT, accept_downloads=True).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Login").click()
    return page


def wait_shown(page, task: str = "binary"):
    """Until the task's item is on screen (the app's page script may still be loading)."""
    page.wait_for_function(f"() => window.labelingShown && window.labelingShown('{task}')")


def current_image(page) -> str:
    return page.get_attribute("#binary-image img", "src") or ""


def image_id(src: str) -> str:
    return src.rsplit("/", 1)[-1].removesuffix(".png")


def focus_page(page):
    page.locator("body").click(position={"x": 5, "y": 5})  # the page, not a text box


def no_error_badges(page) -> bool:
    """Gradio's error state on outputs (what a raised gr.Error leaves over every output)."""
    return page.locator(".error, [data-testid=error]").filter(visible=True).count() == 0


@pytest.mark.slow
def test_label_with_the_keyboard_and_rank_in_chromium(app, browser):
    store, url = app
    page = sign_in(browser, url, "rita")
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.wait_for_selector("#binary-image img")
    if os.environ.get("LABELING_SCREENSHOT"):
        page.wait_for_timeout(500)
        page.screenshot(path=os.environ["LABELING_SCREENSHOT"], clip={"x": 0, "y": 0, "width": 1280, "height": 560})

    keys = ["g", "b", "g", "g", "b"]
    shown = []
    for i, key in enumerate(keys):
        wait_shown(page)
        src = current_image(page)
        shown.append(image_id(src))
        focus_page(page)
        page.keyboard.press(key)
        page.wait_for_function(
            "([prev, n]) => { const img = document.querySelector('#binary-image img');"
            " return img && img.src !== prev && document.querySelector('#progress').innerText"
            ".includes(n + ' images'); }", arg=[src, i + 1])
    labels = current(store, "binary_labels").to_pandas().query("rater_id == 'rita'").sort_values("created_at")
    assert labels["label"].tolist() == ["good" if k == "g" else "bad" for k in keys]
    assert labels["image_id"].tolist() == shown

    # U undoes the last answer and shows that image again
    wait_shown(page)
    src = current_image(page)
    page.keyboard.press("u")
    page.wait_for_function("prev => document.querySelector('#binary-image img').src !== prev", arg=src)
    assert image_id(current_image(page)) == shown[-1]
    assert len(current(store, "binary_labels").to_pandas().query("rater_id == 'rita'")) == 4
    wait_shown(page)
    page.keyboard.press("b")
    page.wait_for_function("() => document.querySelector('#progress').innerText.includes('5 images')")

    # typing a skip reason does not trigger shortcuts; the skip keeps the reason
    wait_shown(page)
    page.locator("#skip-reason textarea").fill("blurry, cannot count")
    page.locator("#btn-skip").click()
    page.wait_for_function("() => document.querySelector('#progress').innerText.includes('6 images')")
    skipped = current(store, "binary_labels").to_pandas().query("label == 'skip'")
    assert skipped["skip_reason"].tolist() == ["blurry, cannot count"]

    # ranking: give the images of one set ranks 2, 1, 2, ... (sets hold 2 or 3 images here)
    page.get_by_role("tab", name="Rank").click()
    wait_shown(page, "ranking")
    n = page.locator("[id^=rank-]:not([id^=rank-image]):visible").count()
    assert n in (2, 3) and page.locator(f"#rank-{n - 1} input[type=radio]").count() == n
    wanted = [2, 1, 2][:n]
    for i, r in enumerate(wanted):
        page.locator(f"#rank-{i}").get_by_label(str(r), exact=True).check()
    page.locator("#btn-rank").click()
    page.wait_for_function("() => document.querySelector('#ranking-status').innerText.includes('Saved')")
    rankings = current(store, "rankings").to_pandas()
    assert rankings["rater_id"].tolist() == ["rita"] and list(rankings["ranks"].iloc[0]) == wanted

    # a refused ranking (not an ordering) says why in the status, stores nothing and leaves the set
    # on the page, choices and all; fixing one rank and submitting again works, no reload
    wait_shown(page, "ranking")
    token = page.evaluate("window.labelingShown('ranking')")
    n = page.locator("[id^=rank-]:not([id^=rank-image]):visible").count()
    for i in range(n):  # every image rank 2: no rank 1, so not an ordering
        page.locator(f"#rank-{i}").get_by_label("2", exact=True).check()
    page.locator("#btn-rank").click()
    page.wait_for_function("() => document.querySelector('#ranking-status').innerText.includes('not an ordering')")
    assert len(current(store, "rankings")) == 1
    assert no_error_badges(page) and page.evaluate("window.labelingShown('ranking')") == token
    assert page.locator("#rank-0").get_by_label("2", exact=True).is_checked()
    assert page.inner_text("#ranking-status").strip().count("\n") == 0  # the reason alone, no "Error"
    page.locator("#rank-0").get_by_label("1", exact=True).check()
    page.locator("#btn-rank").click()
    page.wait_for_function("() => document.querySelector('#ranking-status').innerText.includes('Saved')")
    rankings = current(store, "rankings").to_pandas().sort_values("created_at")
    assert len(rankings) == 2 and list(rankings["ranks"].iloc[-1]) == [1] + [2] * (n - 1)

    # the hostile prompt shows as text and runs nothing
    page.get_by_role("tab", name="Does it match?").click()
    for _ in range(16):
        if "onerror" in page.inner_text("#binary-prompt"):
            break
        wait_shown(page)
        src = current_image(page)
        page.locator("#btn-skip").click()
        page.wait_for_function("prev => document.querySelector('#binary-image img')?.src !== prev"
                               " || document.querySelector('#binary-prompt').innerText.includes('Nothing left')",
                               arg=src)
    assert page.inner_text("#binary-prompt .prompt-text").strip() == HOSTILE_PROMPT  # (its word chips follow)
    assert page.locator("#binary-prompt img, #binary-prompt script").count() == 0
    assert page.evaluate("window.__xss") is None and not dialogs


@pytest.mark.slow
def test_refused_undo_leaves_the_item_and_keys_label_only_what_is_shown(app, browser):
    """A new rater presses U first (nothing to undo): the reason shows, the image stays visible,
    and G then labels exactly that image.  While the image is hidden, G does nothing and a
    click on Good is refused by the server."""
    store, url = app
    page = sign_in(browser, url, "newbie")
    wait_shown(page)
    first = image_id(current_image(page))
    focus_page(page)
    page.keyboard.press("u")
    page.wait_for_function("() => document.querySelector('#binary-status').innerText.includes('no binary answer to undo')")
    assert no_error_badges(page) and page.evaluate("window.labelingShown('binary')")
    assert image_id(current_image(page)) == first
    page.keyboard.press("g")
    page.wait_for_function("() => document.querySelector('#progress').innerText.includes('1 images')")
    labels = current(store, "binary_labels").to_pandas().query("rater_id == 'newbie'")
    assert labels["image_id"].tolist() == [first] and labels["label"].tolist() == ["good"]

    # no item on screen: the image hidden (as under an overlay) -> keys do nothing
    wait_shown(page)
    second = image_id(current_image(page))
    page.evaluate("document.querySelector('#binary-image img').style.visibility = 'hidden'")
    assert page.evaluate("window.labelingShown('binary')") == ""
    focus_page(page)
    for key in "gbs":
        page.keyboard.press(key)
    page.wait_for_timeout(1000)
    assert len(current(store, "binary_labels").to_pandas().query("rater_id == 'newbie'")) == 1
    # ... and a click sends no token: the server refuses, says why, keeps the item
    page.locator("#btn-good").click()
    page.wait_for_function("() => document.querySelector('#binary-status').innerText.includes('nothing was saved')")
    assert len(current(store, "binary_labels").to_pandas().query("rater_id == 'newbie'")) == 1
    page.evaluate("document.querySelector('#binary-image img').style.visibility = ''")
    assert image_id(current_image(page)) == second
    page.keyboard.press("b")
    page.wait_for_function("() => document.querySelector('#progress').innerText.includes('2 images')")
    labels = current(store, "binary_labels").to_pandas().query("rater_id == 'newbie'").sort_values("created_at")
    assert labels["image_id"].tolist() == [first, second] and labels["label"].tolist() == ["good", "bad"]


@pytest.mark.slow
def test_admin_tab_and_exports_reach_the_admin_only(app, browser):
    store, url = app
    lead = sign_in(browser, url, "lead")
    lead.get_by_role("tab", name="Admin").click()
    lead.wait_for_function("() => { const i = document.querySelector('#pass-rate-chart');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    assert lead.get_attribute("#pass-rate-chart", "src").startswith("data:image/png;base64,")
    lead.wait_for_function("() => { const i = document.querySelector('#timeline-chart');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    # per-prompt pass rates, worst first (labelled prompts by good-rate, unlabelled ones last)
    table = lead.locator("#admin-per-prompt")
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    col = next(i for i, h in enumerate(headers) if h.startswith("good_rate"))
    rows = [[c.strip() for c in r.locator("td, [role=gridcell]").all_inner_texts()]
            for r in table.locator("[role=row]").all()]
    rows = [r for r in rows if len(r) == len(headers) and any(r)]  # data rows (not the header, spacers)
    numbers = [float(r[col]) for r in rows if re.fullmatch(r"[0-9.]+", r[col])]
    assert len(rows) == 5 and numbers and numbers == sorted(numbers), rows
    timeline = [h.strip() for h in lead.locator("#admin-timeline thead th").all_inner_texts()]
    assert any(h.startswith("rita") for h in timeline) and any(h.startswith("total") for h in timeline)
    gold = [h.strip() for h in lead.locator("#admin-gold thead th").all_inner_texts()]
    assert any(h.startswith("gold_accuracy") for h in gold) and any(h.startswith("gold_point_precision") for h in gold)

    lead.locator("#btn-export").click()
    link = lead.locator("#export-link")
    link.wait_for()
    href = link.get_attribute("href")
    with lead.expect_download() as dl:
        link.click()
    zip_path = next((store.root / "exports").glob("*/*.zip"))
    assert Path(dl.value.path()).read_bytes() == zip_path.read_bytes()

    # a signed-in rater who has the admin's URL gets nothing, neither there nor from Gradio's files
    rater = sign_in(browser, url, "rita")
    rater.wait_for_selector("#binary-image img")
    assert rater.locator("button[role=tab]", has_text="Admin").count() == 0
    assert rater.request.get(url + href).status == 403
    for path in (zip_path, zip_path.parent / "gold.parquet"):
        assert rater.request.get(f"{url}gradio_api/file={path}").status in (403, 404)
    assert lead.request.get(url + href).status == 200


def test_the_login_page_says_how_long_to_wait(app, browser):
    _, url = app
    page = sign_in(browser, url, "rita", "wrong password")
    page.wait_for_function("() => document.querySelector('#login-error').innerText.includes('Incorrect')")
    statuses = []
    for _ in range(4):  # three free tries for (this client, rita), then a 30 s wait
        page.get_by_label("Password").fill("wrong password")
        with page.expect_response(lambda r: r.url.endswith("/login")) as resp:
            page.get_by_role("button", name="Login").click()
        statuses.append(resp.value.status)
        # The page clears the password only after reading the response's body: filling it before
        # then lost the race (an empty required field, so the next click sent nothing).
        page.wait_for_function("() => document.querySelector('#login-error').innerText.trim() !== ''")
    assert statuses == [400, 400, 400, 429]
    page.wait_for_function("() => /^too many attempts, wait (29|30) s$/.test("
                           "document.querySelector('#login-error').innerText.trim())")
    # the right password from this client waits too, until the time is up
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/login")) as resp:
        page.get_by_role("button", name="Login").click()
    assert resp.value.status == 429
    page.wait_for_function("() => document.querySelector('#login-error').innerText.includes('too many attempts')")


@pytest.mark.slow
def test_images_of_any_size_fit_their_frames(tmp_path, browser):
    """#17: a 48x32, a 1024x768 (white) and a 64x64 image of one prompt, in the binary and the
    ranking views: each fits its box, keeps its aspect, and has a visible frame."""
    from PIL import Image, ImageDraw

    from data import Store
    from data.generations import save_images
    from shapes.render import RENDERER

    def picture(w, h, ground):
        im = Image.new("RGB", (w, h), ground)
        ImageDraw.Draw(im).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill="red")
        return im

    root = tmp_path / "round"
    store = Store(root)
    images = [picture(48, 32, "navy"), picture(1024, 768, "white"), picture(64, 64, "green")]
    save_images(store, images, prompts=["a red circle"] * 3, prompt_ids=["sizes"] * 3, categories=["other"] * 3,
                seeds=[1, 2, 3], model_id="test", settings=RENDERER)
    raters = make_raters(root / "raters.json", ["sue"])
    sizes = {}
    with serve(label_config(root, raters)) as (_, url):
        page = sign_in(browser, url, "sue")
        geometry = """sel => { const img = document.querySelector(sel); const r = img.getBoundingClientRect();
            const box = img.closest('.block').getBoundingClientRect(); const cs = getComputedStyle(img);
            const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            return {nw: img.naturalWidth, nh: img.naturalHeight, w: r.width, h: r.height, scale: s,
                    inside: r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1
                            && r.bottom <= box.bottom + 1 && r.right <= window.innerWidth,
                    fit: cs.objectFit, border: parseFloat(cs.borderTopWidth), color: cs.borderTopColor,
                    ground: cs.backgroundColor, upscaled: img.classList.contains('upscaled')}; }"""
        for _ in range(3):
            wait_shown(page)
            g = page.evaluate(geometry, "#binary-image img")
            sizes[(g["nw"], g["nh"])] = g
            src = current_image(page)
            page.locator("#btn-skip").click()
            page.wait_for_function("prev => document.querySelector('#binary-image img')?.src !== prev"
                                   " || document.querySelector('#binary-prompt').innerText.includes('Nothing left')",
                                   arg=src)
        page.get_by_role("tab", name="Rank").click()
        wait_shown(page, "ranking")
        ranked = [page.evaluate(geometry, f"#rank-image-{i} img") for i in range(3)]
    assert set(sizes) == {(48, 32), (1024, 768), (64, 64)}
    assert {(g["nw"], g["nh"]) for g in ranked} == set(sizes)
    for g in [*sizes.values(), *ranked]:
        assert g["inside"] and g["fit"] == "contain", g
        assert g["border"] >= 1 and g["color"] not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), g
        assert g["ground"] not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), g  # a white image shows its edges
    assert sizes[(1024, 768)]["scale"] < 1 < sizes[(48, 32)]["scale"]  # scaled down and up to fit
    assert sizes[(48, 32)]["upscaled"] and not sizes[(1024, 768)]["upscaled"]


@pytest.mark.slow
def test_a_replaced_image_file_is_withdrawn_and_the_rater_goes_on(tmp_path, browser, caplog, capfd):
    """#44.1: the file of the rater's next image is replaced after its row was written.  The
    answer is saved and the rater gets the image after it (no error state: the page goes on);
    the item leaves serving (its ranking set too) with one log line naming the file, and the
    admin tab lists it."""
    import logging

    from PIL import Image

    from labeling_app.items import build_items

    root = tmp_path / "round"
    store = make_round(root, n_prompts=3, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["rita", "lead"], admins=("lead",))
    cfg = label_config(root, raters)
    gens = store.to_pandas("generations")
    order = [it.item_id for it in build_items(gens, cfg.tasks, cfg.rank_max_images, {}, cfg.seed)["binary"]]
    broken = order[1]
    broken_file = root / gens.set_index("image_id").loc[broken, "image_path"]
    with serve(cfg) as (_, url), caplog.at_level(logging.WARNING, logger="labeling_app"):
        page = sign_in(browser, url, "rita")
        wait_shown(page)
        assert image_id(current_image(page)) == order[0]
        Image.new("RGB", (32, 32), "white").save(broken_file)  # replaced after its row was written
        focus_page(page)
        page.keyboard.press("g")
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('1 images')")
        wait_shown(page)
        assert image_id(current_image(page)) == order[2] and no_error_badges(page)
        page.keyboard.press("b")
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('2 images')")
        labels = current(store, "binary_labels").to_pandas().sort_values("created_at")
        assert labels["image_id"].tolist() == [order[0], order[2]]
        # the ranking tab never offers the set holding the replaced image
        page.get_by_role("tab", name="Rank").click()
        for _ in range(len(gens)):
            wait_shown(page, "ranking")
            srcs = [image_id(page.get_attribute(f"#rank-image-{i} img", "src") or "")
                    for i in range(page.locator("[id^=rank-image-] img:visible").count())]
            assert broken not in srcs and no_error_badges(page)
            token = page.evaluate("window.labelingShown('ranking')")
            for i in range(len(srcs)):
                page.locator(f"#rank-{i}").get_by_label("1", exact=True).check()
            page.locator("#btn-rank").click()
            page.wait_for_function("t => { const p = document.querySelector('#ranking-prompt');"
                                   " return !p.querySelector(`[data-token='${t}']`); }", arg=token)
            if "Nothing left" in page.inner_text("#ranking-prompt"):
                break
        assert "Nothing left" in page.inner_text("#ranking-prompt")

        lead = sign_in(browser, url, "lead")
        lead.get_by_role("tab", name="Admin").click()
        lead.wait_for_function("id => document.querySelector('#admin-withdrawn')?.innerText.includes(id)", arg=broken)
    lines = [r.getMessage() for r in caplog.records if r.name == "labeling_app" and "withdrew" in r.getMessage()]
    assert len(lines) == 1 and str(broken_file) in lines[0] and "\n" not in lines[0]
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.slow
def test_while_the_next_image_loads_the_page_says_so(tmp_path, browser):
    """#44.4: after an answer the new prompt shows at once, with the round's figures already
    counting the answer; while its image loads, the last image is hidden (never beside the new
    prompt), a note says the next image is loading, and the keys wait.  Image requests are held
    back here until the test lets them through."""
    root = tmp_path / "round"
    store = make_round(root, n_prompts=3, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["rita"])
    with serve(label_config(root, raters)) as (labeling_app, url):
        page = sign_in(browser, url, "rita")
        wait_shown(page)
        assert not page.locator("#binary-loading").is_visible()
        before = page.inner_text("#progress")
        first, token = current_image(page), page.evaluate("window.labelingShown('binary')")
        held, release = [], []

        def hold(route):
            route.continue_() if release else held.append(route)

        page.route(lambda url: "/gradio_api/file=" in url, hold)
        focus_page(page)
        page.keyboard.press("g")
        page.wait_for_function("t => { const p = document.querySelector('#binary-prompt [data-token]');"
                               " return p && p.getAttribute('data-token') !== t; }", arg=token)
        progress = page.inner_text("#progress")
        figure = labeling_app.assigner.progress("rita").round_completion["binary"]
        assert "1 images" in progress and f"images {100 * figure:.0f} %" in progress and progress != before
        page.locator("#binary-loading").wait_for(state="visible")
        assert "Loading the next image" in page.inner_text("#binary-loading")
        old_visible = page.evaluate("src => [...document.querySelectorAll('#binary-image img')].some(img =>"
                                    " img.getAttribute('src') === src"
                                    " && img.checkVisibility({visibilityProperty: true}))", first)
        assert not old_visible
        assert page.evaluate("window.labelingShown('binary')") == ""
        page.keyboard.press("b")  # the keys wait: nothing is saved for an image not on screen
        page.wait_for_timeout(300)
        assert len(current(store, "binary_labels")) == 1
        release.append(True)
        for route in held:
            route.continue_()
        wait_shown(page)
        assert not page.locator("#binary-loading").is_visible() and current_image(page) != first
        page.keyboard.press("b")
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('2 images')")
