"""The oracle's problem regions (shapes.regions), simulated clicks (shapes.raters.click_marks)
and simulated marks of a labelled round (shapes.marking).  Pure functions: no torch."""

import numpy as np
import pytest

from core.errors import UserError
from data import Store
from data.marks import MARKS, heatmap, prompt_words
from labeling_app.simulate import simulate_round
from shapes.marking import oracle_masks, simulate_marks, simulated_mark_rows
from shapes.oracle import judge
from shapes.raters import MarkProfile, click_marks, default_panel
from shapes.regions import problem_regions, word_index
from shapes.render import Scene, SceneObject, draw_scene, render, render_round
from shapes.world import Prompt, perturb, prompt_set


def scene(*objects, background="white"):
    return np.asarray(draw_scene(Scene(background, tuple(SceneObject(*o) for o in objects))))


RED_L = ("circle", "red", 0.1, 0.1, 0.25)
RED_R = ("circle", "red", 0.6, 0.1, 0.25)
BLUE_B = ("circle", "blue", 0.35, 0.6, 0.25)


def test_word_indices_follow_prompt_words():
    p = Prompt.parse("two red circles on a white background")
    words = prompt_words(p.text)
    assert [words[word_index(p, a)] for a in ("count", "color", "shape", "background")] == \
        ["two", "red", "circles", "white"]
    q = Prompt.parse("three squares")
    assert prompt_words(q.text)[word_index(q, "shape")] == "squares"
    with pytest.raises(ValueError):
        word_index(q, "color")


def test_an_aligned_image_has_no_problem():
    r = problem_regions(scene(RED_L, RED_R), "two red circles on a white background")
    assert r.aligned and not r.mask.any() and r.keep.all() and r.words == () and r.missing == 0


def test_a_wrong_colour_marks_that_object_and_the_colour_word():
    img = scene(RED_L, BLUE_B)
    r = problem_regions(img, "two red circles")
    assert r.words == (1,) and r.missing == 0
    ys, xs = np.nonzero(r.mask)
    assert ys.min() >= 0.6 * 64 - 2 and xs.min() >= 0.35 * 64 - 2  # the blue circle only
    assert (r.keep == ~r.mask).all()


def test_an_extra_object_marks_the_smallest_and_the_count_word():
    small = ("circle", "red", 0.6, 0.6, 0.2)
    r = problem_regions(scene(RED_L, RED_R, small), "two red circles")
    assert r.words == (0,) and r.missing == 0
    ys, xs = np.nonzero(r.mask)
    assert ys.min() >= 0.6 * 64 - 2 and xs.min() >= 0.6 * 64 - 2


def test_a_wrong_background_marks_everything_but_the_objects():
    r = problem_regions(scene(RED_L, background="black"), "one red circle on a white background")
    assert r.words == (word_index(Prompt.parse("one red circle on a white background"), "background"),)
    assert r.mask[0, 0] and r.mask[-1, -1] and not r.mask[int(0.22 * 64), int(0.22 * 64)]


def test_a_missing_object_has_no_region_only_its_word_and_keeps_the_right_objects():
    r = problem_regions(scene(RED_L), "two red circles")
    assert not r.mask.any() and r.words == (0,) and r.missing == 1
    assert r.keep[int(0.22 * 64), int(0.22 * 64)] and not r.keep[0, 0] and not r.keep[50, 50]
    empty = problem_regions(scene(), "one square")
    assert empty.missing == 1 and empty.words == (0, 1) and not empty.keep.any()


def test_regions_agree_with_the_oracle_on_renders():
    rng = np.random.default_rng(0)
    for i, p in enumerate(prompt_set("all")[::3]):
        shown = perturb(p, p.specified[int(rng.integers(len(p.specified)))], rng) if i % 2 else p
        img = render(shown, i)
        assert problem_regions(img, p).aligned == judge(img, p).aligned, (p.text, shown.text)


def test_click_marks_lands_in_the_regions():
    mask = np.zeros((64, 64), bool)
    mask[10:26, 10:26] = True
    profile = MarkProfile(miss_rate=0.0, position_noise=0.0, word_miss_rate=0.0)
    for s in range(20):
        points, words = click_marks(mask, (2, 0), np.random.default_rng(s), profile)
        assert 1 <= len(points) <= profile.max_clicks and words == [0, 2]
        assert all(mask[int(y * 64), int(x * 64)] for x, y in points)
    # misses: a rater who always misses clicks nothing; same rng state, same marks
    assert click_marks(mask, (1,), np.random.default_rng(0), MarkProfile(miss_rate=1.0, word_miss_rate=1.0)) == ([], [])
    a = click_marks(mask, (1,), np.random.default_rng(5))
    assert a == click_marks(mask, (1,), np.random.default_rng(5))
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in click_marks(mask, (), np.random.default_rng(1),
                                                                    MarkProfile(position_noise=0.5))[0])
    with pytest.raises(UserError, match="miss_rate"):
        MarkProfile(miss_rate=2.0)
    with pytest.raises(UserError, match="marks: max_clicks=0 must be >= 1"):
        MarkProfile(max_clicks=0)


def test_simulated_marks_of_a_round(tmp_path):
    store = Store(tmp_path)
    render_round(store, prompt_set("train")[:6], per_prompt=3, seed=1, mismatch_rate=0.6)
    simulate_round(store, default_panel(3, flip_rate=0.0), overlap=2, seed=3)
    n = simulate_marks(store, seed=0)
    labels = store.to_pandas("binary_labels")
    bad = labels[labels["label"] == "bad"]
    marks = store.to_pandas(MARKS)
    # every bad answer is marked but those whose rater missed every region and word (no row, as in the app)
    assert n == len(marks) > 0.8 * len(bad) and set(marks["label_id"]) <= set(bad["label_id"])
    assert simulate_marks(store, seed=0) == 0  # already marked
    truth = oracle_masks(store, list(marks["image_id"]))
    # clicks sit in (or, by their noise, next to) the oracle's masks
    hits = [truth[i][min(63, int(p["y"] * 64)), min(63, int(p["x"] * 64))]
            for i, pts in zip(marks["image_id"], marks["points"]) for p in pts]
    assert hits and np.mean(hits) > 0.6
    hm = heatmap([[(p["x"], p["y"]) for p in marks["points"].iloc[0]]], (64, 64))
    assert hm.shape == (64, 64)
    rows = simulated_mark_rows(store, seed=0, skip_marked=False)
    assert [r["points"] for r in rows] == [r["points"] for r in simulated_mark_rows(store, seed=0, skip_marked=False)]
