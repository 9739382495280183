"""Probe: DPOK round time with sampling.compile off vs on (same process, oracle reward)."""
import json, sys, tempfile, time
sys.path.insert(0, ".")  # run from the repository root
from pathlib import Path
import numpy as np
from core.config import load_config
from finetune.config import CONFIGS, FinetuneConfig
from finetune.dpok import train_dpok
from shapes.world import prompt_set

tmp = Path(tempfile.mkdtemp())
pf = tmp / "prompts.txt"; pf.write_text("\n".join(p.text for p in prompt_set("train")[:16]) + "\n")
res = {}
for mode in sys.argv[1].split(","):
    cfg = load_config(FinetuneConfig, CONFIGS / "dpok.yaml", [
        "reward.kind=oracle", f"prompts.prompts_file={pf}", "dpok.rounds=7", "dpok.checkpoint_every_rounds=0",
        "curve_every=0", "sample_grid_every=0", f"output_dir={tmp / mode}", f"sampling.compile={mode}"])
    t0 = time.perf_counter()
    r = train_dpok(cfg, progress=False)
    h = r.history
    res[mode] = {"total_s": time.perf_counter() - t0, "first_sample_s": h[0]["seconds_sample"],
                 "sample_s": float(np.mean([x["seconds_sample"] for x in h[1:]])),
                 "update_s": float(np.mean([x["seconds_update"] for x in h[1:]])),
                 "reward_mean": [round(x["reward_mean"], 3) for x in h], "approx_kl_first": h[0]["approx_kl"],
                 "clip_first": h[0]["clip_fraction"]}
print("DPOKPROBE", json.dumps(res))
