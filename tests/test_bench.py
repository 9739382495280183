"""The benchmark runs end to end on a tiny pipeline (its numbers are not checked here: speed is
measured by `make bench`, never by timed unit tests)."""

import pytest

import json

from core.config import load_config, replace_keys, to_dict
from core.errors import UserError
from finetune.config import CONFIGS, FinetuneConfig
from pipelines.bench import main
from pipelines.cli import run
from reward.reward_fn import RewardSource
from tools.bench import BenchConfig, gpu_config, shapes_config
from tools.bench_passes import sampling_calls

# The tiny sizes of the end-to-end runs below: fine-tuning overrides on the shipped config
TINY = ("shapes_args=[dpok.prompts_per_round=1, dpok.samples_per_prompt=2, sampling.num_inference_steps=2, "
        "dpok.window=[0, null], dpok.tail_steps=0, dpok.steps_per_sample=1, dpok.minibatch_size=2, rwl.batch_size=2]")


def _bench_keys(out: str, pipeline: str, method: str, **more) -> dict:
    """What the bench states it sets on a shipped config (tools.bench.bench_overrides), written out."""
    return {"method": method, "output_dir": out, "model.pipeline": pipeline, "reward": RewardSource(path=""),
            "sample_grid_every": 0, "curve_every": 0, "prompts.eval_prompts": ("one red circle",),
            "dpok.rounds": 3, "dpok.checkpoint_every_rounds": 0, "rwl.steps": 12, "rwl.samples_per_prompt": 1,
            "rwl.pretrain_per_prompt": 1, "rwl.checkpoint_every_steps": 0, **more}


@pytest.mark.parametrize("method", ["dpok", "rwl"])
def test_bench_times_the_shipped_configs_with_only_its_overrides(method):
    """`make bench` with no arguments times what `make demo` (finetune/configs/<method>.yaml) and
    sd15.yaml ship: every fine-tuning key is the shipped one but for the overrides the bench states
    (how long it times, what it does not time); the user's ``*_args`` go on top."""
    def shipped(path, **more):
        return to_dict(replace_keys(load_config(FinetuneConfig, path), _bench_keys("out", "sd", method, **more)))

    cfg = BenchConfig()
    assert to_dict(shapes_config(cfg, "sd", "out", method)) == shipped(CONFIGS / f"{method}.yaml")
    assert to_dict(gpu_config(cfg, "sd", "out", method, "p.txt")) == shipped(CONFIGS / "sd15.yaml",
                                                                             **{"prompts.prompts_file": "p.txt"})
    # the options on top: region_weight and each configuration's own fine-tuning overrides
    cfg = BenchConfig(region_weight=0.5, shapes_args=("dpok.minibatch_size=4",), gpu_args=("compute.micro_batch=16",))
    assert to_dict(shapes_config(cfg, "sd", "out", method)) == shipped(
        CONFIGS / f"{method}.yaml", **{"region.weight": 0.5, "dpok.minibatch_size": 4})
    assert to_dict(gpu_config(cfg, "sd", "out", method, "p.txt")) == shipped(
        CONFIGS / "sd15.yaml", **{"region.weight": 0.5, "compute.micro_batch": 16, "prompts.prompts_file": "p.txt"})


def test_the_bare_sampling_counts_the_chain_the_loop_samples():
    """The bare sampling pass is timed for the UNet calls DPOK's sampler makes: the shipped shapes
    config stops the stochastic chain at its window's end (step 8) and finishes with a 4-call
    deterministic tail, 12 calls, not 20; sd15.yaml has no tail, all 50 steps."""
    assert sampling_calls(shapes_config(BenchConfig(), "sd", "out", "dpok")) == 8 + 4
    assert sampling_calls(gpu_config(BenchConfig(), "sd", "out", "dpok", "p.txt")) == 50


def test_bench_refuses_a_bad_override_before_timing(tmp_path):
    """A misspelt fine-tuning key in ``gpu_args`` is one error naming it, before any loop runs (also
    without a GPU), and nothing is written."""
    with pytest.raises(UserError, match="micro_btch"):
        main([f"output_dir={tmp_path}/bench", "gpu_args=[compute.micro_btch=16]"])
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_bench_writes_both_methods(tmp_path, tiny_sd):
    """On a fresh clone (no runs/reward): the bench builds the reward model it times."""
    from tiny_models import make_tiny_flow

    sd, flow = tiny_sd, make_tiny_flow(tmp_path / "flow")
    rc = run(main, [f"cpu_pipeline={sd}", f"flow_pipeline={flow}", f"output_dir={tmp_path}/bench", "rounds=2",
                    "rwl_steps=3", TINY, "repeats=1", "gpu=false"])
    assert rc == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())
    # the SD configuration, then the flow one on the same configs (its bare passes the transformer's)
    assert [(r["name"], r["method"]) for r in rows] == [("shapes", "dpok"), ("shapes", "rwl"),
                                                        ("shapes-flow", "dpok"), ("shapes-flow", "rwl")]
    assert rows[2]["adapter_s"] is None and rows[2]["images_per_s"] > 0
    assert all(r["overhead_ratio"] > 0 and r["bare_s"] > 0 for r in rows)
    # the DPOK update timed with LoRA and with DiffCon's side network, in the same process
    assert set(rows[0]["adapter_s"]) == {"lora", "side"}
    assert all(t["update"] > 0 and t["sample"] > 0 for t in rows[0]["adapter_s"].values())
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "overhead ratio" in md and "cheaper than lora" in md and "shapes-flow against shapes" in md


@pytest.mark.slow
def test_bench_times_the_region_objective_when_asked(tmp_path, tiny_sd):
    """``region_weight``: both loops run region-aware fine-tuning on the bench's reward, given an
    untrained region head; the records say so, DPOK's with the change it measured outside the masks."""
    rc = run(main, [f"cpu_pipeline={tiny_sd}", f"output_dir={tmp_path}/bench", "rounds=1", "rwl_steps=1",
                    TINY, "repeats=1", "gpu=false",
                    "adapters=[]", "region_weight=0.5"])  # no flow row: refused for a flow model
    assert rc == 0
    dpok, rwl = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert "region.weight 0.5 (mean outside change" in dpok["notes"]
    assert "region.weight 0.5" in rwl["notes"]


@pytest.mark.slow
def test_bench_times_the_levers_on_the_cpu_when_asked(tmp_path, tiny_sd):
    """``cpu_levers=true``: the bare sampling forward and update forward+backward eager and
    torch.compiled, with the compile's seconds (the figures behind the loop staying eager on the
    CPU), in bench.json and bench.md."""
    rc = run(main, [f"cpu_pipeline={tiny_sd}", f"output_dir={tmp_path}/bench", "rounds=1", "rwl_steps=1",
                    TINY, "repeats=1", "gpu=false", "cpu_levers=true", "flow=false"])
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
