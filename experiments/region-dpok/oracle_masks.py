"""Upper-bound ablation of region-aware fine-tuning (issue 57): the same run as
``pipelines.finetune --config F ...`` but the problem masks M come from the shapes oracle's exact
problem regions (shapes.regions.problem_regions) instead of the reward's region head; the reward
itself stays the learned one.  It asks: with perfect masks, does Focus-N-Fix's penalty keep what
the base drew right?  Experiment code only: the oracle's masks are never a product option.

``ORACLE_KEEP=right`` (environment) protects only what the oracle calls right instead of 1 - M:
when an object is missing, only the right objects' pixels (shapes.regions.ProblemRegions.keep),
so that the fix may draw the missing object anywhere else (issue 57's suggested meaning).

    PYTHONPATH=. python experiments/region-dpok/oracle_masks.py --config runs/demo-s0/finetune-dpok/config.yaml \
        output_dir=runs/region-dpok-s0/dpok-region-oracle3 reward.path=runs/region-dpok-s0/reward-fnf3 region.weight=3
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import torch

import finetune.dpok
import finetune.rwl
from pipelines import finetune as entry
from pipelines.cli import run
from core.images import to_uint8
from reward.reward_fn import load_region
from shapes.regions import problem_regions


def _oracle_region(cfg, device, reward=None, threshold=None):
    if os.environ.get("ORACLE_KEEP", "mask") == "mask":
        return load_region(replace(cfg, kind="oracle"), device)

    def not_right(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # "problem" = not kept
        keep = [problem_regions(a, p).keep for a, p in zip(to_uint8(images), prompts)]
        return torch.as_tensor(~np.stack(keep), device=images.device)
    return not_right


if __name__ == "__main__":
    finetune.dpok.load_region = _oracle_region
    finetune.rwl.load_region = _oracle_region
    sys.exit(run(entry.main))
