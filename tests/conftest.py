"""Shared fixtures.  Tiers: pure functions (fast), whole paths on tiny models (marked slow where
they take more than a few seconds), and ``@pytest.mark.gpu`` (skipped without CUDA)."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test-fast` runs one worker a core (pytest-xdist): each takes one thread, and so do the
    # stages it runs as subprocesses, so the workers never oversubscribe the machine's cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random StableDiffusionPipeline folder (32x32 images), built once per test session.
    Tests must not write into it."""
    from tiny_models import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP folder (32x32 images), built once per test session.  Tests must not write
    into it."""
    from tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip", image_size=32)
