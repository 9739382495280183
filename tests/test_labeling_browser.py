"""End to end in a real browser: Playwright driving Debian's Chromium against a live app.

Log in, label five images with the keyboard, rank one set, then read the Parquet files back.
Skips (with the reason) without Chromium: browsers cannot be downloaded here, so the test uses the
system one (`apt-get install chromium`; .ci/run installs it).  Set LABELING_SCREENSHOT=<file.png>
to save a screenshot of the binary task (the README's picture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from data.labels import current
from tests.labeling_server import HOSTILE_PROMPT, PASSWORD, label_config, make_raters, make_round, serve

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium) or set "
                "CHROMIUM=<path>; Playwright's own browsers cannot be downloaded here",
                allow_module_level=True)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def current_image(page) -> str:
    return page.get_attribute("#binary-image img", "src") or ""


def test_label_with_the_keyboard_and_rank_in_chromium(tmp_path, browser):
    root = tmp_path / "round"
    store = make_round(root, n_prompts=3, per_prompt=3)
    raters = make_raters(root / "raters.json", ["rita"])
    with serve(label_config(root, raters)) as (app, url):
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(TIMEOUT_MS)
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.get_by_label("username").fill("rita")
        page.get_by_label("password").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#binary-image img")
        if os.environ.get("LABELING_SCREENSHOT"):
            page.wait_for_timeout(500)
            page.screenshot(path=os.environ["LABELING_SCREENSHOT"], clip={"x": 0, "y": 0, "width": 1280, "height": 560})

        keys = ["g", "b", "g", "g", "b"]
        shown = []
        for i, key in enumerate(keys):
            src = current_image(page)
            shown.append(src.rsplit("/", 1)[-1].removesuffix(".png"))
            page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a text box
            page.keyboard.press(key)
            page.wait_for_function(
                "([prev, n]) => { const img = document.querySelector('#binary-image img');"
                " return img && img.src !== prev && document.querySelector('#progress').innerText"
                ".includes(n + ' images'); }", arg=[src, i + 1])
        labels = current(store, "binary_labels").to_pandas().sort_values("created_at")
        assert labels["rater_id"].tolist() == ["rita"] * 5
        assert labels["label"].tolist() == ["good" if k == "g" else "bad" for k in keys]
        assert labels["image_id"].tolist() == shown

        # U undoes the last answer and shows that image again
        src = current_image(page)
        page.keyboard.press("u")
        page.wait_for_function("prev => document.querySelector('#binary-image img').src !== prev", arg=src)
        assert current_image(page).rsplit("/", 1)[-1].removesuffix(".png") == shown[-1]
        assert len(current(store, "binary_labels")) == 4
        page.keyboard.press("b")
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('5 images')")

        # typing a skip reason does not trigger shortcuts; the skip keeps the reason
        page.locator("#skip-reason textarea").fill("blurry, cannot count")
        page.locator("#btn-skip").click()
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('6 images')")
        skipped = current(store, "binary_labels").to_pandas().query("label == 'skip'")
        assert skipped["skip_reason"].tolist() == ["blurry, cannot count"]

        # ranking: give the images of one set ranks 2, 1, 2, ... (sets hold 2 or 3 images here)
        page.get_by_role("tab", name="Rank").click()
        page.wait_for_selector("#rank-image-0 img")
        n = page.locator("[id^=rank-]:not([id^=rank-image]):visible").count()
        assert n in (2, 3) and page.locator(f"#rank-{n - 1} input[type=radio]").count() == n
        wanted = [2, 1, 2][:n]
        for i, r in enumerate(wanted):
            page.locator(f"#rank-{i}").get_by_label(str(r), exact=True).check()
        page.locator("#btn-rank").click()
        page.wait_for_function("() => document.querySelector('#ranking-status').innerText.includes('Saved')")
        rankings = current(store, "rankings").to_pandas()
        assert rankings["rater_id"].tolist() == ["rita"] and list(rankings["ranks"].iloc[0]) == wanted

        # a ranking that is not an ordering is refused with a message, and not stored
        page.wait_for_selector("#rank-image-0 img")
        n = page.locator("[id^=rank-]:not([id^=rank-image]):visible").count()
        for i in range(n):  # every image rank 2: no rank 1, so not an ordering
            page.locator(f"#rank-{i}").get_by_label("2", exact=True).check()
        page.locator("#btn-rank").click()
        page.get_by_text("not an ordering").first.wait_for()
        assert len(current(store, "rankings")) == 1

        # the hostile prompt shows as text and runs nothing
        page.get_by_role("tab", name="Does it match?").click()
        for _ in range(12):
            if "onerror" in page.inner_text("#binary-prompt"):
                break
            src = current_image(page)
            page.locator("#btn-skip").click()
            page.wait_for_function("prev => document.querySelector('#binary-image img')?.src !== prev"
                                   " || document.querySelector('#binary-prompt').innerText.includes('Nothing left')",
                                   arg=src)
        assert page.inner_text("#binary-prompt").strip() == HOSTILE_PROMPT
        assert page.locator("#binary-prompt img, #binary-prompt script").count() == 0
        assert page.evaluate("window.__xss") is None and not dialogs
