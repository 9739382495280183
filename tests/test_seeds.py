"""Tier 1: the named random streams (core.seeds) never coincide, and library code draws only
from them."""

import re
from pathlib import Path

import numpy as np

from core import seeds
from core.seeds import Stream

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("core", "data", "shapes", "collect", "labeling_app", "reward", "finetune", "evaluation", "workflows", "tools",
           "pipelines")


def test_every_stage_has_its_own_stream():
    tags = [int(s) for s in Stream]
    assert len(tags) == len(set(tags))  # @unique refuses aliases; this also catches a re-used value
    draws = {s: seeds.rng(0, s).random(4).tolist() for s in Stream}
    assert len({tuple(v) for v in draws.values()}) == len(draws)
    # a keyed stream (a rater, a round) differs from every other stage's stream under any key
    assert seeds.rng(0, Stream.RATER_SERVING, 5).random() != seeds.rng(0, Stream.SIMULATED_PANEL).random()
    assert seeds.derived_seed(3, Stream.DPOK_ROUND, 1, 0) != seeds.derived_seed(3, Stream.RWL_STEP, 1, 0)


def test_library_code_takes_its_numpy_streams_from_core_seeds():
    """A new `default_rng([seed, 7])` or `SeedSequence([...])` elsewhere would bypass the registry."""
    found = []
    for package in LIBRARY:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "core" / "seeds.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                # The renderer's noise is a function of the image (its seed and prompt), not a stage's stream.
                if path == ROOT / "shapes" / "render.py" and "prompt.count, hash_text(prompt.text)" in line:
                    continue
                if re.search(r"default_rng\(\[|SeedSequence\(", line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_evaluation_seeds_never_meet_a_rounds_or_a_renders():
    lo_eval = min(seeds.eval_seeds(0, 1))
    for seed in (0, 1, 17, 1234, 4000):
        assert seeds.round_image_seed(seed, 10_000) < lo_eval and seeds.render_seed(seed, 10_000, 50_000) < lo_eval
        assert seeds.round_image_seed(seed, 10_000) < seeds.round_image_seed(seed + 1, 0)
    a, b = seeds.eval_seeds(3, 1000), seeds.eval_seeds(4, 1000)
    assert a[0] == lo_eval + 3 * seeds.EVAL_STRIDE and not set(a) & set(b)
    assert len(set(seeds.FIXED_NOISE.values())) == len(seeds.FIXED_NOISE)


def test_streams_are_reproducible():
    a, b = seeds.rng(7, Stream.ORACLE_GOLD).permutation(10), seeds.rng(7, Stream.ORACLE_GOLD).permutation(10)
    assert np.array_equal(a, b)
    assert seeds.text_key("rater-1") == seeds.text_key("rater-1") != seeds.text_key("rater-2")
