"""The results page is generated from results files: rows per run and model, gains, recovery."""

import json
import re

from pipelines.cli import run
from pipelines.results_page import main


def _demo(base, dpok, oracle):
    def model(x):
        return {"targets": {"overall": x, "color": x, "count": x, "combination": x},
                "generalization": {"overall": 0.2}, "controls": {"overall": 0.7}, "fidelity": 0.1}
    return {"base": model(base), "dpok": model(dpok), "dpok_oracle": model(oracle), "targets_chosen": ["a"] * 20,
            "reward_model": {"val_images": {"pairwise_accuracy_vs_oracle": 0.8,
                                            "zero_shot_clip_pairwise_accuracy_vs_oracle": 0.7}},
            "seconds": {"total": 900.0},
            "curves": {"dpok": [{"round": 0, "oracle_aligned": 0.25}, {"round": 10, "oracle_aligned": 0.5}]}}


def test_results_page_from_files(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "demo-2026-01-01-seed0.json").write_text(json.dumps(_demo(0.30, 0.40, 0.50)))
    newer = _demo(0.30, 0.36, 0.46)
    newer["eval_samples"] = {"per_target_prompt": 16, "per_side_prompt": 4}
    (folder / "demo-2026-01-01-seed1.json").write_text(json.dumps(newer))
    older = _demo(0.30, 0.36, 0.46)  # written before eval_samples: seeds from the base's images
    older["base"]["n_images"] = 20 * 8
    (folder / "demo-2025-12-01-old.json").write_text(json.dumps(older))
    (folder / "finetune-2026-01-01-oracle.json").write_text(json.dumps(
        {"command": "make finetune METHOD=dpok", "seconds": 300.4,
         "curve": [{"round": 0, "oracle_aligned": 0.25}, {"round": 20, "oracle_aligned": 0.5}]}))
    (folder / "finetune-2026-01-02-evaluated.json").write_text(json.dumps(
        {"command": "make finetune METHOD=dpok; make eval", "seconds": 200.0,
         "curve": [{"round": r, "oracle_aligned": v, "images": 64} for r, v in ((0, 0.25), (20, 0.625), (40, 0.5))],
         "eval": {"base": 0.25, "model": 0.5, "samples_per_prompt": 16}, "device": "H100, fp32"}))
    (folder / "reward-2026-01-03-e2e.json").write_text(json.dumps(
        {"command": "make reward", "train_seconds": 84.6,
         "val_images": {"pairwise_accuracy_vs_oracle": 0.78, "zero_shot_clip_pairwise_accuracy_vs_oracle": 0.71,
                        "oracle_labels_head_pairwise_accuracy_vs_oracle": 0.77,
                        "pairwise_accuracy_vs_oracle_aligned_pairs": 0.86,
                        "pairwise_accuracy_vs_oracle_failure_pairs": 0.66},
         "val_prompts": {"pairwise_accuracy_vs_oracle": 0.74, "zero_shot_clip_pairwise_accuracy_vs_oracle": 0.75}}))
    (folder / "probe").mkdir()  # records sit in the folder of their study
    (folder / "probe" / "probe-2026-01-04-oracle.json").write_text(json.dumps(
        {"command": "make probe-steps", "chain": "20 DDIM steps, guidance 5, eta 1", "samples": 256, "mean_reward": 0.3, "settled": {"0": 0.04, "8": 0.53},
         "tail_from": 8, "stochastic_tail_corr": 0.44, "tails": [{"tail_steps": 4, "corr": 0.46, "mean_reward": 0.29}]}))
    (folder / "bench-cpu-2026-01-05-levers.json").write_text(json.dumps(
        [{"name": "shapes-cpu", "method": "dpok", "device": "cpu", "overhead_ratio": 1.1, "images_per_s": 20.0,
          "transitions_per_s": 50.0, "peak_memory_mb": 900.0,
          "levers_fwd_bwd_s": {"eager": 0.5, "channels_last": 0.7, "compile_seconds": 95.2, "channels_last+compile": 0.6}},
         {"name": "shapes-cpu", "method": "rwl", "device": "cpu", "overhead_ratio": 1.0, "images_per_s": 0.0,
          "transitions_per_s": 0.0, "peak_memory_mb": 900.0}]))
    (folder / "bench-h200-2026-01-06-sd15.json").write_text(json.dumps(
        [{"name": "sd15-512-cuda", "method": "dpok", "device": "cuda", "overhead_ratio": 0.97, "images_per_s": 4.27,
          "transitions_per_s": 34.1, "peak_memory_mb": 11863.0, "mfu_update": 0.178, "gpu": "NVIDIA H200",
          "date": "2026-01-06", "compute": {"compile": "auto", "micro_batch": 8, "gradient_checkpointing": False},
          "levers": {"off": {"sample_fwd_2B": 0.132, "update_fwd_bwd_2u": 0.108, "compile_s": 0.0},
                     "on": {"sample_fwd_2B": 0.084, "update_fwd_bwd_2u": 0.074, "compile_s": 175.0}}}]))
    out = tmp_path / "results.md"
    assert run(main, [f"folder={folder}", f"out={out}"]) == 0
    page = out.read_text()
    assert "| 2026-01-04-oracle | `make probe-steps` | 20 DDIM steps, guidance 5, eta 1 | 256 (0.300) | 0: 0.04, 8: 0.53 | 8: 0.44; 4: 0.46 (0.290) |" in page
    assert "| 2026-01-01-seed0 | dpok | 40.0 |" in page and "| 2026-01-01-seed1 | base | 30.0 |" in page
    assert "dpok +7.3 (+6.0, +10.0, +6.0)" in page
    assert "recovers 42 %" in page  # (6 + 10 + 6) / (16 + 20 + 16)
    assert "0.800 (0.700)" in page
    assert "| 2026-01-01-seed1 | 20 | 16 (4) |" in page and "| 2025-12-01-old | 20 | 8 (4) |" in page
    assert "| 2026-01-01-seed0 | 20 | 4 (4) |" in page and "| 900 (0, 0, 0, 0, 0, 0) | 2 CPU cores |" in page
    assert "- 2026-01-01-seed0 dpok: 0: 25.0, 10: 50.0" in page
    assert ("| 2026-01-01-oracle | `make finetune METHOD=dpok` | 0: 25.0, 20: 50.0 | +25.0 | 0.0 (n/a): n/a | - | 300 "
            "| 2 CPU cores |") in page  # no image count: no standard error
    # best 62.5 % (SE sqrt(.625 * .375 / 64) = 6.1 points), then 50.0: a fall of 12.5
    assert "| +25.0 | 12.5 (6.1): no | 25.0 → 50.0 (+25.0), 16 per prompt | 200 | H100, fp32 |" in page
    assert "- 2026-01-01-seed0 dpok: 0: 25.0, 10: 50.0 (best 50.0 % at round 10, last 50.0 %; no later point below the best)" in page
    assert ("| cpu-2026-01-05-levers | shapes-cpu | dpok | cpu | - | - | 1.100 | 20.00 | 50.0 | 900 | - "
            "| 0.500 / 0.700 / 0.600 (95 s) |") in page
    assert "| cpu-2026-01-05-levers | shapes-cpu | rwl | cpu | - | - | 1.000 | 0.00 | 0.0 | 900 | - | - |" in page
    assert ("| h200-2026-01-06-sd15 | sd15-512-cuda | dpok | NVIDIA H200 | 2026-01-06 | compile auto, micro-batch 8 "
            "| 0.970 | 4.27 | 34.1 | 11863 | 17.8 % | 0.132 → 0.084 / 0.108 → 0.074 (175 s) |") in page
    assert "| 2026-01-03-e2e | `make reward` | 0.780 (0.710; 0.770) | 0.860 | 0.660 | 0.740 (0.750) | 85 |" in page


def test_gain_by_group_splits_the_per_prompt_gains_by_count_and_background():
    from tools.results_page import gain_by_group

    def run(base, dpok):
        return {"base": {"per_prompt": base}, "dpok": {"per_prompt": dpok}}
    runs = [("a", run({"two circles on a white background": 0.5, "four squares": 0.0, "my own prompt": 0.5},
                      {"two circles on a white background": 0.25, "four squares": 0.5, "my own prompt": 1.0})),
            ("b", run({"two red squares": 0.25}, {"two red squares": 0.75}))]
    lines = gain_by_group(runs)
    assert lines[2] == ("| model | two objects | four objects | any background | white background |")
    assert lines[4] == "| base | 37.5 (2) | 0.0 (1) | 12.5 (2) | 50.0 (1) |"
    assert lines[5] == "| dpok | +12.5 (2) | +50.0 (1) | +50.0 (2) | -25.0 (1) |"  # (-25 + 50) / 2; prompts outside the grammar left out
    assert gain_by_group([("c", run({"my own prompt": 0.5}, {"my own prompt": 1.0}))]) == []


def test_results_page_fills_the_readme_block_with_the_runs_named(tmp_path):
    """make results-page also refills README's demo-results block from the runs readme.json names;
    a missing run or missing markers are one clear error, and nothing is written then."""
    import pytest

    from core.errors import UserError

    folder = tmp_path / "results"
    folder.mkdir()
    run_ = _demo(0.30, 0.52, 0.60)
    run_["base"]["n_images"] = 20 * 16
    run_["eval_samples"] = {"per_target_prompt": 16, "per_side_prompt": 4}
    run_["device"] = "H100"
    (folder / "demo-2026-02-01-seed0.json").write_text(json.dumps(run_))
    (folder / "demo-2026-01-01-old.json").write_text(json.dumps(_demo(0.3, 0.3, 0.3)))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- demo-results:start -->\nold text\n<!-- demo-results:end -->\n\nafter\n")
    args = [f"folder={folder}", f"out={tmp_path}/results.md", f"readme={readme}"]
    assert run(main, args) == 0
    assert "old text" in readme.read_text()  # no readme.json: the block is left alone
    (folder / "readme.json").write_text(json.dumps({"demo_runs": ["2026-02-01-seed0"]}))
    assert run(main, args) == 0
    text = readme.read_text()
    assert "old text" not in text and text.endswith("<!-- demo-results:end -->\n\nafter\n")
    # readable names (method, demo seed, machine), not run ids
    assert "| DPOK | 0 | 52.0 (+22.0) | 70.0 | H100 |" in text and "| base model | 0 | 30.0 | 70.0 | H100 |" in text
    assert "16 fresh seeds each" in text and "2026-01-01-old" not in text and "2026-02-01-seed0" not in text
    assert "mean (each run): dpok +22.0 (+22.0), dpok_oracle +30.0 (+30.0)" in text
    # the command that makes such a run, and its stage time with the machine it was measured on
    assert 'make demo ARGS=\"seed=N oracle_upper_bound=true\"' in text
    assert "Time of its stages (the install not included): seed 0: 15.0 min (900 s) on H100." in text
    page = (tmp_path / "results.md").read_text()  # the current runs' gains apart from other runs'
    assert "the current config's runs (2026-02-01-seed0), mean (each): dpok +22.0 (+22.0)" in page
    assert "other runs, mean (each): dpok +0.0 (+0.0)" in page
    (folder / "readme.json").write_text(json.dumps({"demo_runs": ["2026-02-01-seed9"]}))
    with pytest.raises(UserError, match="no results file"):
        main(args)
    (folder / "readme.json").write_text(json.dumps({"demo_runs": ["2026-02-01-seed0"]}))
    readme.write_text("# no markers\n")
    (tmp_path / "results.md").unlink()
    with pytest.raises(UserError, match="no <!-- demo-results:start -->"):
        main(args)
    assert readme.read_text() == "# no markers\n" and not (tmp_path / "results.md").exists()


def test_loop_records_get_a_row_per_round_and_control(tmp_path):
    from tools.records import load_runs
    from tools.results_page import results_page

    def row(k, share, gain):
        return {"round": k, "labels_spent": 100 * (k + 1), "round0_targets": share, "round0_gain": gain,
                "round0_gain_se": 0.02, "own_targets": share, "own_gain": gain, "own_gain_se": 0.03, "controls": 0.8,
                "controls_gain": 0.01, "generalization": 0.2, "fidelity_vs_base": -0.1, "reward_before": 0.76,
                "reward_after": 0.78}

    res = {"base": {"round0_targets": 0.25, "controls": 0.79, "generalization": 0.2, "fidelity": 0.1},
           "rounds": [row(0, 0.5, 0.25), row(1, 0.6, 0.35)],
           "one_shot": {"labels_spent": 200, "round0_targets": 0.55, "round0_gain": 0.3, "round0_gain_se": 0.02,
                        "controls": 0.8, "fidelity": 0.09}}
    study = tmp_path / "closed-loop"
    study.mkdir()
    (study / "loop-2026-11-26-seed0.json").write_text(json.dumps(res))
    runs = load_runs(tmp_path)
    page = results_page(tmp_path, runs, [])
    assert "## The closed loop" in page
    assert "| 2026-11-26-seed0 | 2 CPU cores | round 1 | 200 | 60.0 (+35.0 ± 2.0) |" in page
    assert "| one-shot control | 200 | 55.0 (+30.0 ± 2.0) |" in page


def test_demo_stage_records_get_their_table(tmp_path):
    from tools.records import load_runs
    from tools.results_page import results_page

    figures = {"base": {"targets": 0.25}, "dpok": {"targets": 0.5, "gain": 0.25, "gain_se": 0.02}}
    res = {"demo_args": [], "device": "2 CPU cores (AVX2)", "runs": {
        "eager": {"seconds": {"generate": 200.0, "total": 600.0}, "wall_s": 610.0, "figures": figures},
        "compiled-cold": {"seconds": {"generate": 150.0, "total": 500.0}, "wall_s": 505.0, "figures": figures}}}
    study = tmp_path / "compiled-sampling"
    study.mkdir()
    (study / "stages-2026-11-26-avx2-seed0.json").write_text(json.dumps(res))
    page = results_page(tmp_path, load_runs(tmp_path), [])
    assert "### 2026-11-26-avx2-seed0 (2 CPU cores (AVX2))" in page
    assert "| generate | 200 | 150 | 1.33 | - |" in page and "| wall | 610 | 505 | 1.21 | - |" in page


def test_records_are_filed_into_one_file_per_study_and_read_back_the_same(tmp_path):
    """make results-page files loose run outputs into their study's records.jsonl; the page reads
    them the same before and after, and a record filed twice is one clear error."""
    import pytest

    from core.errors import UserError
    from tools.records import RECORDS, load_runs, pack

    study = tmp_path / "demo"
    study.mkdir()
    (study / "demo-2026-01-01-seed0.json").write_text(json.dumps(_demo(0.3, 0.4, 0.5)))
    (study / "bench-cpu-2026-01-02-x.json").write_text(json.dumps([{"name": "a"}]))
    (tmp_path / "readme.json").write_text(json.dumps({"demo_runs": []}))
    before = load_runs(tmp_path)
    assert pack(tmp_path) == 2
    assert sorted(p.name for p in study.iterdir()) == [RECORDS]
    assert (tmp_path / "readme.json").exists() and load_runs(tmp_path) == before
    (study / "demo-2026-01-01-seed0.json").write_text(json.dumps(_demo(0.3, 0.4, 0.5)))
    with pytest.raises(UserError, match="twice"):
        load_runs(tmp_path)


def test_another_base_models_demo_gains_are_kept_apart():
    """A demo on another base model (its results.json's base_model, e.g. shapes-flow) gets its own
    gain sentence: its gains are not averaged into shapes-sd's runs."""
    from tools.results_page import demo_section

    flow = {**_demo(0.30, 0.32, 0.28), "base_model": "shapes-flow"}
    text = "\n".join(demo_section([("sd-seed0", _demo(0.30, 0.40, 0.50)), ("flow-seed0", flow)]))
    assert "other runs, mean (each): dpok +10.0 (+10.0), dpok_oracle +20.0 (+20.0)" in text
    assert "runs on shapes-flow, mean (each): dpok +2.0 (+2.0), dpok_oracle -2.0 (-2.0)" in text


def test_a_record_names_the_machine_by_its_cpu_and_vector_extensions():
    from tools.records import machine

    assert re.fullmatch(r"2 CPU cores \(.+, (AVX512|AVX2 only|no AVX2), (no )?AMX\)", machine())
