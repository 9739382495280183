"""Tier 1: the learning-rate schedule shared by the shapes world's training and fine-tuning."""

import math

import pytest

from core.schedules import learning_rate


def test_warmup_then_constant():
    assert [learning_rate(s, 10, 4, 2.0, "constant") for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert learning_rate(0, 10, 0, 2.0, "constant") == 2.0


def test_cosine_runs_from_peak_to_floor():
    lrs = [learning_rate(s, 10, 0, 1.0, "cosine", 0.1) for s in range(12)]
    assert lrs[0] == 1.0
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: the cosine's midpoint
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)  # stays at the floor past the end
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cosine_after_warmup_matches_the_closed_form():
    for s in range(5, 20):
        t = (s - 5) / 15
        assert learning_rate(s, 20, 5, 3e-4, "cosine") == pytest.approx(3e-4 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))))
