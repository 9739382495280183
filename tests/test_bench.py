"""The benchmark runs end to end on a tiny pipeline (its numbers are not checked here: speed is
measured by `make bench`, never by timed unit tests)."""

import pytest

import json

from pipelines.bench import main
from pipelines.cli import run


@pytest.mark.slow
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
    # the DPOK update timed with LoRA and with DiffCon's side network, in the same process
    assert set(rows[0]["adapter_s"]) == {"lora", "side"}
    assert all(t["update"] > 0 and t["sample"] > 0 for t in rows[0]["adapter_s"].values())
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "overhead ratio" in md and "cheaper than lora" in md


@pytest.mark.slow
def test_bench_times_the_region_objective_when_asked(tmp_path, tiny_sd):
    """``region_weight``: both loops run region-aware fine-tuning on the bench's reward, given an
    untrained region head; the records say so, DPOK's with the change it measured outside the masks."""
    rc = run(main, [f"cpu_pipeline={tiny_sd}", f"output_dir={tmp_path}/bench", "rounds=1",
                    "prompts_per_round=1", "samples_per_prompt=2", "num_inference_steps=2", "steps_per_sample=1",
                    "minibatch_size=2", "rwl_steps=1", "rwl_batch_size=2", "repeats=1", "gpu=false",
                    "adapters=[]", "region_weight=0.5"])
    assert rc == 0
    dpok, rwl = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert "region.weight 0.5 (mean outside change" in dpok["notes"]
    assert "region.weight 0.5" in rwl["notes"]


@pytest.mark.slow
def test_bench_times_the_levers_on_the_cpu_when_asked(tmp_path, tiny_sd):
    """``cpu_levers=true``: the bare sampling forward and update forward+backward eager and
    torch.compiled, with the compile's seconds (the figures behind the loop staying eager on the
    CPU), in bench.json and bench.md."""
    rc = run(main, [f"cpu_pipeline={tiny_sd}", f"output_dir={tmp_path}/bench", "rounds=1",
                    "prompts_per_round=1", "samples_per_prompt=2", "num_inference_steps=2", "steps_per_sample=1",
                    "minibatch_size=2", "rwl_steps=1", "rwl_batch_size=2", "repeats=1", "gpu=false", "cpu_levers=true"])
    assert rc == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())
    levers = rows[0]["levers"]
    assert set(levers) == {"off", "on"}
    assert set(levers["on"]) == {"sample_fwd_2B", "update_fwd_bwd_2u", "compile_s"}
    assert set(levers["off"]) == {"sample_fwd_2B", "update_fwd_bwd_2u", "compile_s", "update_fwd_bwd_2u_checkpointed"}
    assert all(t["sample_fwd_2B"] > 0 and t["update_fwd_bwd_2u"] > 0 for t in levers.values())
    assert levers["on"]["compile_s"] > 0 and levers["off"]["compile_s"] < levers["on"]["compile_s"]
    assert rows[0]["compute"] == {"compile": "auto", "micro_batch": None, "gradient_checkpointing": False}
    assert "seconds eager and compiled" in (tmp_path / "bench" / "bench.md").read_text()


def test_demo_bench_table_gives_each_stage_and_the_ratios():
    from tools.demo_bench import markdown

    figures = {"base": {"targets": 0.25}, "dpok": {"targets": 0.5, "gain": 0.25, "gain_se": 0.02}}
    result = {"demo_args": ["seed=1"], "runs": {
        "eager": {"seconds": {"generate": 200.0, "evaluate": 400.0, "total": 600.0}, "wall_s": 610.0, "figures": figures},
        "compiled-cold": {"seconds": {"generate": 100.0, "evaluate": 160.0, "total": 260.0}, "wall_s": 270.0, "figures": figures},
        "compiled-warm": {"failed": 2, "wall_s": 3.0}}}
    md = markdown(result)
    assert "| generate | 200 | 100 | 2.00 | - |" in md and "| total | 600 | 260 | 2.31 | - |" in md
    assert "| wall | 610 | 270 | 2.26 | - |" in md
    assert "dpok 50.0 (+25.0 ± 2.0)" in md and "compiled-warm: failed with exit status 2" in md
