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

import numpy as np
import torch

from pipelines import finetune as entry
from pipelines.cli import run
from core.images import to_uint8
from reward.reward_fn import LearnedReward, OracleReward
from shapes.regions import problem_regions


def _oracle_masks(self, images: torch.Tensor, prompts: list[str], threshold=None) -> torch.Tensor:
    if os.environ.get("ORACLE_KEEP", "mask") == "mask":
        return OracleReward().masks(images, prompts)
    keep = [problem_regions(a, p).keep for a, p in zip(to_uint8(images), prompts)]  # "problem" = not kept
    return torch.as_tensor(~np.stack(keep), device=images.device)


if __name__ == "__main__":
    LearnedReward.masks = _oracle_masks  # the learned reward scores; the oracle marks
    LearnedReward.require_region = lambda self: None  # its own region head is not used
    sys.exit(run(entry.main))
