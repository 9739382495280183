"""Keep what is right: fixed / broken shares and moved pixels against hand-made images."""

import math

import numpy as np
import pytest

from evaluation.keep import MOVED_THRESHOLD, keep_what_is_right, moved_pixels


def _img(v, size=4):
    return np.full((size, size, 3), v, dtype=np.uint8)


def test_moved_pixels_counts_a_change_above_the_threshold_in_any_channel():
    a, b = _img(100), _img(100)
    b[0, 0, 2] = 100 + MOVED_THRESHOLD + 1  # one channel of one pixel
    b[1, 1, 0] = 100 + MOVED_THRESHOLD  # at the threshold: not moved
    mv = moved_pixels(a, b)
    assert mv.sum() == 1 and mv[0, 0]
    with pytest.raises(ValueError):
        moved_pixels(a, _img(100, 5))


def test_fixed_broken_and_moved_inside_and_outside_the_problem_region():
    base_ok = [False, False, True, True]
    model_ok = [True, False, True, False]  # fixes 1 of 2 wrong, breaks 1 of 2 right
    base = [_img(0) for _ in range(4)]
    model = [_img(0) for _ in range(4)]
    model[0][:2] = 255  # the top half of image 0 moved
    model[3][:] = 255  # image 3 (base right) moved everywhere
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # problem region: the top-left quarter (4 px), all moved
    k = keep_what_is_right(base_ok, model_ok, base, model, [(mask, ~mask), None, None, None])
    assert (k.fixed, k.broken, k.n_base_wrong, k.n_base_right) == (0.5, 0.5, 2, 2)
    assert k.moved_base_right == pytest.approx(0.5)  # image 2 unchanged, image 3 all moved
    assert k.moved_inside == 1.0 and k.moved_outside == pytest.approx(4 / 12)
    none = keep_what_is_right([True], [True], [_img(0)], [_img(0)])
    assert math.isnan(none.fixed) and none.broken == 0.0 and none.moved_inside is None


def test_keep_grid_rows_and_tint():
    from PIL import Image

    from evaluation.compare import keep_rows
    from evaluation.grids import keep_grid, tint

    masks = [np.zeros((4, 4), bool) for _ in range(6)]
    masks[1][0, 0] = masks[4][1, 1] = True
    # right: 0, 2, 5; wrong with a region: 1, 4 (3 is wrong with nothing to tint)
    assert keep_rows([True, False, True, False, False, True], masks, ["a"] * 6, 4) == [0, 1, 2, 4]
    assert keep_rows([True, True, True, False], masks[:4], ["a"] * 4, 4) == [0, 1, 2]  # image 3: no region
    # each prompt's first image before any prompt's second
    assert keep_rows([True, True, True, True], masks[:4], ["a", "a", "b", "b"], 2) == [0, 2]
    red = np.asarray(tint(Image.new("RGB", (4, 4)), masks[1]))
    assert tuple(red[0, 0]) == (128, 0, 0) and tuple(red[1, 1]) == (0, 0, 0)
    grid = keep_grid([[Image.new("RGB", (4, 4))] * 3], ["one circle"], [[False, True, False]], [masks[1]])
    assert grid.size[1] == 4 + 2 * 3  # one row, padded


def test_broken_counts_as_changed_only_with_two_percent_of_the_pixels_moved():
    """8x8 images: 1 pixel of 64 (1.6 %) moved leaves an image unchanged, 2 (3.1 %) change it."""
    base = [_img(0, 8) for _ in range(4)]
    model = [_img(0, 8) for _ in range(4)]
    model[0][0, 0] = 255  # broken, 1 pixel moved: a verdict on the oracle's edge
    model[1][0, :2] = 255  # broken, 2 pixels moved: broken for real
    model[2][0, :2] = 255  # still right, 2 pixels moved
    k = keep_what_is_right([True] * 4, [False, False, True, True], base, model)
    assert k.broken == 0.5 and k.broken_changed == 0.25 and k.unchanged == 0.5  # images 0 and 3 unchanged
    assert math.isnan(keep_what_is_right([False], [True], [_img(0)], [_img(0)]).broken_changed)
