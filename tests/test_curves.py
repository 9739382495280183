"""evaluation.curves: the learning-curve rule (no later point more than one standard error below the best)."""

import math

import pytest

from evaluation.curves import check_curve


def _curve(*values, images=None):
    return [{"round": 10 * i, "oracle_aligned": v, **({"images": images} if images else {})} for i, v in enumerate(values)]


def test_a_climbing_curve_is_steady():
    c = check_curve(_curve(0.2, 0.3, 0.5), images=64)
    assert (c.best, c.best_round, c.last, c.fall, c.fall_round) == (0.5, 20, 0.5, 0.0, None)
    assert c.steady and c.standard_error == pytest.approx(math.sqrt(0.25 / 64))


def test_the_largest_fall_after_the_best_counts_not_one_before_it():
    # 0.45 before the best is no fall; after it, 0.59 (within 1 SE) and then 0.5 (0.125 below)
    c = check_curve(_curve(0.45, 0.625, 0.59, 0.5, 0.55), images=64)
    assert c.best_round == 10 and c.fall == pytest.approx(0.125) and c.fall_round == 30
    assert c.steady is False and "falls back" in c.describe()
    # with 1,024 images a point the same 3.5-point dip is more than one SE (1.5) too
    assert check_curve(_curve(0.625, 0.59), images=1024).steady is False
    assert check_curve(_curve(0.625, 0.59), images=64).steady is True  # SE 6.1 points


def test_image_count_from_the_points_or_unknown():
    assert check_curve(_curve(0.5, 0.3, images=64)).standard_error == pytest.approx(0.0625)
    unknown = check_curve(_curve(0.5, 0.3))
    assert unknown.standard_error is None and unknown.steady is None and "SE" not in unknown.describe()
    assert check_curve(_curve(0.4, 0.4, 0.4)).best_round == 0  # ties: the first best point
    with pytest.raises(ValueError):
        check_curve([])
