"""``make oracle-check``: how far the shapes-world oracle can be trusted as a judge.

Renders ``n_images`` prompts (cycling through every prompt of the grammar) and measures:

- ``render_accuracy``: the oracle says "aligned" for a render and its own prompt, over clean renders
  and the same renders with blur and noise like a generated image's (target >= 0.99);
- ``noise_aligned_rate``: uniform-noise images judged aligned with a prompt (target <= 0.05);
- ``mismatch_aligned_rate``: degraded renders judged aligned with a prompt that differs in one
  specified attribute, so the image truly does not match (target <= 0.05).

The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from core import seeds
from pipelines.cli import config_parser, parse_config, run
from shapes.oracle import judge
from shapes.render import degrade, render
from shapes.world import ATTRIBUTES, all_prompts, perturb


@dataclass(frozen=True)
class OracleCheckConfig:
    n_images: int = 600
    size: int = 64
    seed: int = 0
    blur_sigma: tuple[float, float] = (0.5, 1.2)  # px at 64x64, drawn uniformly per image
    noise_sigma: tuple[float, float] = (5.0, 15.0)  # 0-255 units, drawn uniformly per image


@dataclass(frozen=True)
class OracleCheckResult:
    n_images: int
    render_accuracy: float
    clean_accuracy: float
    degraded_accuracy: float
    noise_aligned_rate: float
    mismatch_aligned_rate: float
    mismatch_aligned_by_attribute: dict[str, float]
    ms_per_image: float
    targets_met: bool


def check_oracle(cfg: OracleCheckConfig) -> OracleCheckResult:
    rng = seeds.rng(cfg.seed, seeds.Stream.ORACLE_CHECK)
    prompts = all_prompts()
    clean, degraded, noise = [], [], []
    mismatch: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    t0 = time.perf_counter()
    for i in tqdm(range(cfg.n_images), desc="oracle-check", unit="img", file=sys.stderr):
        p = prompts[i % len(prompts)]
        img = np.asarray(render(p, seed=seeds.render_seed(cfg.seed, i), size=cfg.size))
        clean.append(judge(img, p).aligned)
        d = degrade(img, rng, rng.uniform(*cfg.blur_sigma), rng.uniform(*cfg.noise_sigma))
        degraded.append(judge(d, p).aligned)
        attr = p.specified[int(rng.integers(len(p.specified)))]
        mismatch[attr].append(judge(d, perturb(p, attr, rng)).aligned)
        noisy = rng.integers(0, 256, size=img.shape, dtype=np.uint8)
        noise.append(judge(noisy, p).aligned)
    elapsed = time.perf_counter() - t0
    all_mm = [x for xs in mismatch.values() for x in xs]
    render_acc = float(np.mean(clean + degraded))
    noise_rate = float(np.mean(noise))
    mm_rate = float(np.mean(all_mm))
    return OracleCheckResult(
        n_images=cfg.n_images,
        render_accuracy=round(render_acc, 4),
        clean_accuracy=round(float(np.mean(clean)), 4),
        degraded_accuracy=round(float(np.mean(degraded)), 4),
        noise_aligned_rate=round(noise_rate, 4),
        mismatch_aligned_rate=round(mm_rate, 4),
        mismatch_aligned_by_attribute={a: round(float(np.mean(v)), 4) for a, v in mismatch.items() if v},
        ms_per_image=round(1000 * elapsed / (4 * cfg.n_images), 3),  # four judgements per image
        targets_met=render_acc >= 0.99 and noise_rate <= 0.05 and mm_rate <= 0.05,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(OracleCheckConfig, config_parser(__doc__.splitlines()[0]), argv)
    result = check_oracle(cfg)
    print(json.dumps(result.__dict__))
    return 0 if result.targets_met else 1


if __name__ == "__main__":
    sys.exit(run(main))
