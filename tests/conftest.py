"""Shared fixtures.  Tiers: pure functions (fast), whole paths on tiny models (marked slow where
they take more than a few seconds), and ``@pytest.mark.gpu`` (skipped without CUDA)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
