"""The benchmark runs end to end on a tiny pipeline (its numbers are not checked here: speed is
measured by `make bench`, never by timed unit tests)."""

import json

from pipelines.bench import main
from pipelines.cli import run


def test_bench_writes_both_methods(tmp_path, tiny_sd):
    """On a fresh clone (no runs/reward): the bench builds the reward model it times."""
    sd = tiny_sd
    rc = run(main, [f"cpu_pipeline={sd}", f"output_dir={tmp_path}/bench", "rounds=2",
                    "prompts_per_round=1", "samples_per_prompt=2", "num_inference_steps=2", "steps_per_sample=1",
                    "minibatch_size=2", "rwl_steps=3", "rwl_batch_size=2", "repeats=1", "gpu=false"])
    assert rc == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [r["method"] for r in rows] == ["dpok", "rwl"]
    assert all(r["overhead_ratio"] > 0 and r["bare_s"] > 0 for r in rows)
    assert "overhead ratio" in (tmp_path / "bench" / "bench.md").read_text()
