"""Probe: compiled sampling path vs eager on the shapes SD model (not part of the project)."""
import json, os, sys, time
import numpy as np, torch
from dataclasses import replace
sys.path.insert(0, ".")  # run from the repository root
from core.loading import load_sd_pipeline
from core.sampling import SamplingConfig, generate_images
from shapes import SHAPES_SD
from shapes.world import prompt_set
from shapes.oracle import judge

label = sys.argv[1]; n_agree = int(sys.argv[2]) if len(sys.argv) > 2 else 256
torch.manual_seed(0)
pipe = load_sd_pipeline(SHAPES_SD, device="cpu")
prompts = [p.text for p in prompt_set("train")]
texts = [prompts[i % len(prompts)] for i in range(n_agree)]
seeds = list(range(1000, 1000 + n_agree))
eager, comp = SamplingConfig(compile="off"), SamplingConfig(compile="on")
res = {"label": label, "cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "threads": torch.get_num_threads(),
       "isa": torch.backends.cpu.get_cpu_capability()}
def timed(cfg, t, s, p=pipe):
    t0 = time.perf_counter(); im = generate_images(p, t, s, cfg); return time.perf_counter() - t0, im
# first compiled batch (compile included), then steady
res["compiled_first_batch_s"], _ = timed(comp, texts[:32], seeds[:32])
res["compiled_64_s"], _ = timed(comp, texts[32:96], seeds[32:96])
res["eager_64_s"], _ = timed(eager, texts[32:96], seeds[32:96])
res["compiled_64_s_again"], _ = timed(comp, texts[32:96], seeds[32:96])
res["eager_64_s_again"], _ = timed(eager, texts[32:96], seeds[32:96])
# a padded short batch: no new graph
res["compiled_short_batch_s"], _ = timed(comp, texts[:5], seeds[:5])
# verdict agreement eager vs compiled
_, ie = timed(eager, texts, seeds); _, ic = timed(comp, texts, seeds)
ve = [judge(a, t).aligned for a, t in zip(ie, texts)]; vc = [judge(a, t).aligned for a, t in zip(ic, texts)]
res["agree"] = float(np.mean(np.array(ve) == np.array(vc))); res["aligned_eager"] = float(np.mean(ve)); res["aligned_compiled"] = float(np.mean(vc))
res["max_pixel_diff"] = int(max(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(ie, ic)))
# another model (perturbed weights) through the same compiled module
pipe2 = load_sd_pipeline(SHAPES_SD, device="cpu")
with torch.no_grad():
    for prm in pipe2.unet.parameters():
        prm.add_(0.02 * prm.std() * torch.randn_like(prm))
res["model2_compiled_first_s"], i2c = timed(comp, texts[:32], seeds[:32], pipe2)
_, i2e = timed(eager, texts[:32], seeds[:32], pipe2)
res["model2_max_pixel_diff"] = int(max(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(i2e, i2c)))
res["model2_differs_from_model1"] = int(max(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(i2c, ic[:32])))
print("PROBE", json.dumps(res))
