"""A 2,000-character prompt scrolls inside its box: the answer buttons stay in view (issue 58)."""

from __future__ import annotations

import pytest

from tests import test_labeling_browser as chromium  # skips this module too without Chromium
from tests.labeling_server import label_config, make_raters, serve
from tests.test_labeling_browser import VIEWPORT, sign_in, wait_shown

browser = chromium.browser  # the fixture: one Chromium for the module

LONG_PROMPT = ("one red circle on a white background, " * 60)[:2000]


@pytest.mark.slow
def test_a_long_prompt_keeps_the_buttons_in_view(tmp_path, browser):
    from data import Store
    from data.generations import save_images
    from shapes.render import RENDERER, render
    from shapes.world import Prompt

    root = tmp_path / "round"
    p = Prompt.parse("one red circle")
    save_images(Store(root), [render(p, 1), render(p, 2)], prompts=[LONG_PROMPT, "x" * 2000],
                prompt_ids=["long", "word"], categories=["other"] * 2, seeds=[1, 2], model_id="test",
                settings=RENDERER)
    raters = make_raters(root / "raters.json", ["sue"])
    with serve(label_config(root, raters)) as (_, url):
        page = sign_in(browser, url, "sue")
        for _ in range(2):  # the long sentence, then one 2,000-letter word
            wait_shown(page)
            box = page.evaluate("""() => { const p = document.querySelector('#binary-prompt .prompt-text');
                return {text: p.innerText.length, scroll: p.scrollHeight > p.clientHeight,
                        right: p.getBoundingClientRect().right, width: window.innerWidth,
                        buttons: ['#btn-good', '#btn-bad', '#btn-skip'].map(
                            s => document.querySelector(s).getBoundingClientRect().bottom)}; }""")
            assert max(box["buttons"]) <= VIEWPORT["height"] and box["right"] <= box["width"], box
            assert box["text"] >= 1990 and box["scroll"], box  # all of it there, scrolled
            src = page.get_attribute("#binary-image img", "src")
            page.locator("#btn-skip").click()
            page.wait_for_function("prev => document.querySelector('#binary-image img')?.src !== prev"
                                   " || document.querySelector('#binary-prompt').innerText.includes('Nothing left')",
                                   arg=src)
