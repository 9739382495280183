import json

import numpy as np
import pytest

from data.errors import UserError
from finetune.evaluate import EvalConfig, evaluate, frechet_distance, load_finetuned
from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from pipelines.config import load_config
from tiny_models import make_tiny_clip


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(a, a + 1.0)
    assert shifted == pytest.approx(4.0, rel=1e-6)  # ||mu shift||^2, covariances equal
    assert frechet_distance(a, rng.normal(size=(500, 4)) * 2) > 1.0


def test_eval_base_and_a_finetuned_run(tmp_path, tiny_sd):
    sd, clip = tiny_sd, make_tiny_clip(tmp_path / "clip")
    run_cfg = load_config(FinetuneConfig, None, [
        f"output_dir={tmp_path}/dpok", f"model.pipeline={sd}", "reward.kind=oracle", "sampling.num_steps=2",
        "dpok.rounds=1", "dpok.prompts_per_round=1", "dpok.samples_per_prompt=2", "dpok.steps_per_sample=1",
        "sample_grid_every=0", "optim.lr=0.05"])
    train_dpok(run_cfg, progress=False)
    cfg = load_config(EvalConfig, None, [
        f"base={sd}", f"clip={clip}", f"models=[dpok={tmp_path}/dpok, gone={tmp_path}/none]",
        "samples_per_prompt=1", "sampling.num_inference_steps=2", "reward.kind=oracle",
        f"output_dir={tmp_path}/report", "grid_prompts=2"])
    results = evaluate(cfg)
    assert [r.name for r in results] == ["base", "dpok"]  # a missing run is skipped
    for r in results:
        assert set(r.alignment) == {"color", "count", "background", "combination", "overall"}
        assert np.isfinite(r.reward) and np.isfinite(r.fidelity) and r.n_images == 50
    report = tmp_path / "report"
    assert "| dpok |" in (report / "results.md").read_text()
    assert set(json.loads((report / "metrics.json").read_text())["models"]) == {"base", "dpok"}
    assert (report / "samples-base.png").exists() and (report / "samples-dpok.png").exists()
    with pytest.raises(UserError, match="holds no fine-tuned model"):
        load_finetuned(sd, tmp_path)
