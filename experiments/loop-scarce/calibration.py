"""Does the reward's epistemic spread (reward.epistemic) say where it is wrong?  Train the reward
on a demo round's labels and print its metrics.json "epistemic" block.

    python experiments/loop-scarce/calibration.py datasets/demo-s0 [out dir]

(the demo's dataset root of a seed: `make demo ARGS="seed=N root=datasets/demo-sN ..."`).
"""

import json
import sys

from core.config import load_config
from reward.config import RewardConfig
from reward.train import train_reward
from shapes import SHAPES_CLIP

root = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/reward-calibration"
res = train_reward(load_config(RewardConfig, None, [
    f"data.root={root}", f"model.clip={SHAPES_CLIP}", f"out_dir={out}", "overwrite=true", "progress=false",
    "train.baselines=false", "train.ablate_aux=false"]))
print(json.dumps({"root": root, "epistemic": res.metrics["epistemic"]}))
