"""tests/test_loop.py's tiny loop, run once in the checkout given, for comparing two commits.

    python experiments/closed-loop/tiny_loop.py <checkout> <out folder> <models folder> [key=value ...]

The tiny SD and CLIP are built into <models folder> on the first call and reused, so two
checkouts run on the same weights.  Before 364a720 DPOK's window was dpok.start_step/early_steps;
the same window is passed in whichever form the checkout takes.
"""

import sys
from pathlib import Path

repo, out, models, *extra = sys.argv[1:]
sys.path[:0] = [repo, f"{repo}/tests"]

from pipelines.cli import run  # noqa: E402
from pipelines.loop import main  # noqa: E402
from tiny_models import make_tiny_clip, make_tiny_sd  # noqa: E402

models, out = Path(models), Path(out)
sd, clip = models / "sd", models / "clip"
if not sd.exists():
    make_tiny_sd(sd)
    make_tiny_clip(clip, image_size=32)
window = "dpok.window=[1, 2]" if Path(repo, "workflows/round.py").exists() else "dpok.start_step=1, dpok.early_steps=2"
sys.exit(run(main, [
    f"pipeline={sd}", f"clip={clip}", f"root={out}/ds", f"runs={out}/runs", f"report={out}/report",
    "rounds=2", "per_prompt=2", "round_per_prompt=2", "budget=8", "raters=3", "overlap=1",
    "eval_samples_per_prompt=1", "eval_side_samples_per_prompt=1",
    "generate_args=[sampling.num_inference_steps=2, max_prompts=24]",
    "reward_args=[train.epochs=2, train.ablation_seeds=1, data.min_val_prompts=3, progress=false]",
    "dpok_args=[sampling.num_inference_steps=4, dpok.rounds=1, dpok.prompts_per_round=2, dpok.samples_per_prompt=2, "
    f"{window}, dpok.steps_per_sample=1, dpok.tail_steps=1, dpok.minibatch_size=4]",
    "eval_args=[sampling.num_inference_steps=2, grid_prompts=2]",
    "flip_rate=0.4", "rule.min_images=1", "rule.max_good_rate=1.0", "min_targets=1", *extra]))
