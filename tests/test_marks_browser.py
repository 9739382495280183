"""Marking where an image is wrong, in a real browser (Chromium via Playwright, as
tests/test_labeling_browser.py): a rater clicks points on the image (a click on a dot removes it)
and toggles prompt words with the mouse and the number keys; G with marks is refused and the marks
stay; B saves them; the next image starts clean; U takes the answer and its marks back; the Rank
tab is unaffected.  Skips without Chromium, as that module does.  MARKS_SCREENSHOT=<file.png>
saves a picture of the marked page."""

from __future__ import annotations

import os

import pytest


from data.labels import current
from data.marks import current_marks
from tests.labeling_server import label_config, make_raters, make_round, serve
from tests.test_labeling_browser import (browser, current_image, focus_page, image_id, no_error_badges,  # noqa: F401
                                         sign_in, wait_shown)

# The drawn picture of the binary image in page pixels (object-fit: contain in a bordered box).
PICTURE_JS = """() => { const img = document.querySelector('#binary-image img'), r = img.getBoundingClientRect();
  const cw = img.clientWidth, ch = img.clientHeight, s = Math.min(cw / img.naturalWidth, ch / img.naturalHeight);
  const w = img.naturalWidth * s, h = img.naturalHeight * s;
  return {x: r.left + img.clientLeft + (cw - w) / 2, y: r.top + img.clientTop + (ch - h) / 2, w: w, h: h}; }"""


def dots(page) -> int:
    return page.locator("#binary-image .mark-dot").count()


def marked_words(page) -> list[int]:
    return page.evaluate("() => [...document.querySelectorAll('#binary-prompt .word-chip.marked')]"
                         ".map(c => parseInt(c.dataset.word))")


@pytest.mark.slow
def test_mark_points_and_words_with_mouse_and_keys(tmp_path, browser):  # noqa: F811
    root = tmp_path / "round"
    store = make_round(root, n_prompts=3, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["rita"])
    with serve(label_config(root, raters)) as (_, url):
        page = sign_in(browser, url, "rita")
        wait_shown(page)
        first = image_id(current_image(page))
        n_words = len(page.inner_text("#binary-prompt .prompt-text").split())
        chips = page.locator("#binary-prompt .word-chip")
        assert chips.count() == n_words >= 2
        pic = page.evaluate(PICTURE_JS)

        def click(fx, fy):
            page.mouse.click(pic["x"] + fx * pic["w"], pic["y"] + fy * pic["h"])

        for fx, fy in ((0.25, 0.25), (0.75, 0.5), (0.5, 0.9)):
            click(fx, fy)
        page.wait_for_function("() => document.querySelectorAll('#binary-image .mark-dot').length === 3")
        click(0.5, 0.9)  # on a dot: removes it
        page.wait_for_function("() => document.querySelectorAll('#binary-image .mark-dot').length === 2")
        focus_page(page)
        page.keyboard.press("1")            # word 0 on
        page.keyboard.press("2")            # word 1 on ...
        page.keyboard.press("2")            # ... and off again
        chips.nth(n_words - 1).click()      # the last word, with the mouse
        assert marked_words(page) == sorted({0, n_words - 1})
        if os.environ.get("MARKS_SCREENSHOT"):  # a picture of a rater marking
            page.screenshot(path=os.environ["MARKS_SCREENSHOT"], clip={"x": 0, "y": 0, "width": 1280, "height": 600})

        # G with marks: refused, nothing saved, the marks stay on the page
        focus_page(page)
        page.keyboard.press("g")
        page.wait_for_function("() => document.querySelector('#binary-status').innerText.includes('answered good')")
        assert no_error_badges(page) and len(current(store, "binary_labels")) == 0
        assert dots(page) == 2 and marked_words(page) == sorted({0, n_words - 1})
        assert image_id(current_image(page)) == first

        page.keyboard.press("b")
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('1 images')")
        row, = current_marks(store).to_pylist()
        label, = current(store, "binary_labels").to_pylist()
        assert (row["label_id"], row["image_id"], label["label"]) == (label["label_id"], first, "bad")
        assert row["words"] == sorted({0, n_words - 1})
        got = [(p["x"], p["y"]) for p in row["points"]]
        assert len(got) == 2 and all(abs(a - b) < 0.02 for p, q in zip(got, [(0.25, 0.25), (0.75, 0.5)])
                                     for a, b in zip(p, q)), got

        # the next image starts with no marks; U brings the first back and takes its marks away
        wait_shown(page)
        assert dots(page) == 0 and marked_words(page) == []
        src = current_image(page)
        page.keyboard.press("u")
        page.wait_for_function("prev => document.querySelector('#binary-image img').src !== prev", arg=src)
        wait_shown(page)
        assert image_id(current_image(page)) == first and dots(page) == 0 and marked_words(page) == []
        assert current_marks(store).num_rows == 0 and len(current(store, "binary_labels")) == 0
        page.keyboard.press("g")  # answered again, without marks
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('1 images')")
        assert current_marks(store).num_rows == 0

        # the Rank tab is unaffected: no dots or chips there, number keys mark nothing, ranks save
        page.get_by_role("tab", name="Rank").click()
        wait_shown(page, "ranking")
        focus_page(page)
        page.keyboard.press("1")
        n = page.locator("[id^=rank-]:not([id^=rank-image]):visible").count()
        for i in range(n):
            page.locator(f"#rank-{i}").get_by_label(str(i + 1), exact=True).check()
        page.locator("#btn-rank").click()
        page.wait_for_function("() => document.querySelector('#ranking-status').innerText.includes('Saved')")
        assert len(current(store, "rankings")) == 1
        assert page.locator("#ranking-prompt .word-chip, [id^=rank-image] .mark-dot").count() == 0
        assert current_marks(store).num_rows == 0 and no_error_badges(page)


@pytest.mark.slow
def test_unsaved_marks_ask_before_the_page_is_left(tmp_path, browser):  # noqa: F811
    """#74.7: marks not yet sent with an answer are said to be unsaved, and leaving or reloading
    the page with them on screen asks first (beforeunload); once saved, the page leaves freely."""
    root = tmp_path / "round"
    make_round(root, n_prompts=2, per_prompt=2, hostile=False)
    raters = make_raters(root / "raters.json", ["rose"])
    with serve(label_config(root, raters)) as (_, url):
        page = sign_in(browser, url, "rose")
        wait_shown(page)
        asked = []
        page.on("dialog", lambda d: (asked.append(d.type), d.dismiss()))  # dismissed: stay on the page

        def leave():
            page.close(run_before_unload=True)
            page.wait_for_timeout(1000)  # a beforeunload prompt comes within this, or the page closes

        focus_page(page)
        pic = page.evaluate(PICTURE_JS)
        page.mouse.click(pic["x"] + 0.5 * pic["w"], pic["y"] + 0.5 * pic["h"])
        page.wait_for_function("() => document.querySelectorAll('#binary-image .mark-dot').length === 1")
        assert "not saved" in page.inner_text("#binary-prompt .mark-count")
        leave()
        assert asked == ["beforeunload"] and not page.is_closed() and dots(page) == 1
        page.keyboard.press("b")  # saved with the answer: the next image has none, nothing to ask
        page.wait_for_function("() => document.querySelector('#progress').innerText.includes('1 images')")
        wait_shown(page)
        assert dots(page) == 0 and "not saved" not in page.inner_text("#binary-prompt .mark-count")
        with page.expect_event("close"):
            page.close(run_before_unload=True)
        assert asked == ["beforeunload"]
