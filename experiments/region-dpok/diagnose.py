"""What region-aware fine-tuning sees on a demo round: for the base model's images of the targets
(and plain DPOK's from the same seeds), the reward's verdict, the region head's keep region, and the
change the Focus-N-Fix penalty would charge — split by the oracle's truth.

    PYTHONPATH=. python experiments/region-dpok/diagnose.py runs/demo-s1 runs/region-dpok-s1/reward [per_prompt]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from core.images import pil_to_tensor
from core.loading import load_model, resolve_model
from core.sampling import SamplingConfig, generate_images
from data.targets import read_prompts_file
from finetune.region import RegionConfig, keep_masks, outside_change, problem_masks
from reward.model import RewardModel
from shapes.oracle import judge
from shapes.world import Prompt

demo, reward_dir = Path(sys.argv[1]), sys.argv[2]
per = int(sys.argv[3]) if len(sys.argv) > 3 else 8
prompts = [p for p in read_prompts_file(demo / "targets.txt") for _ in range(per)]
seeds = [10_000 + i for i in range(len(prompts))]
base_pipe = load_model(resolve_model("shapes/models/shapes-sd"), device="cpu")
base = pil_to_tensor(generate_images(base_pipe, prompts, seeds, SamplingConfig()))
dpok_pipe = load_model(resolve_model(demo / "finetune-dpok"), device="cpu")
tuned = pil_to_tensor(generate_images(dpok_pipe, prompts, seeds, SamplingConfig()))
rm = RewardModel.from_pretrained(reward_dir, "cpu")
rc = RegionConfig()
with torch.no_grad():
    right = rm.score(base, prompts) >= 0.5  # P(rater says good)
    problem = problem_masks(rm.heatmap(base, prompts) > rm.region_head.threshold, rc.dilate)
keep = keep_masks(problem)
change = outside_change(tuned, base, keep).numpy()
u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
truth_base = np.array([judge(a, Prompt.parse(p)).aligned for a, p in zip(u8(base), prompts)])
truth_tuned = np.array([judge(a, Prompt.parse(p)).aligned for a, p in zip(u8(tuned), prompts)])
area = keep.flatten(1).float().mean(1).numpy()
marked = problem.flatten(1).any(1).numpy()
right = right.numpy()


def group(mask, name):
    n = int(mask.sum())
    if n == 0:
        return {name: {"n": 0}}
    return {name: {"n": n, "judged_right": float(right[mask].mean()), "marked": float(marked[mask].mean()),
                   "keep_area": float(area[mask].mean()), "penalised_change": float(change[mask].mean())}}


out = {"images": len(prompts)}
out |= group(truth_base, "base_right")
out |= group(truth_base & ~truth_tuned, "base_right_broken_by_dpok")
out |= group(truth_base & truth_tuned, "base_right_kept_by_dpok")
out |= group(~truth_base, "base_wrong")
out |= group(~truth_base & truth_tuned, "base_wrong_fixed_by_dpok")
print(json.dumps(out, indent=1))
