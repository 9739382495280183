"""The Makefile as a user types it: ARGS with a list value, CONFIG reaching accelerate launch,
the torch spec stamp, a clean that keeps people's labels, and pyproject's torch floor."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import parse_overrides

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# Stands in for .venv/bin/python and .venv/bin/accelerate: prints its argv as JSON, runs nothing.
FAKE = f"#!{sys.executable}\nimport json, sys\nprint('ARGV ' + json.dumps(sys.argv[1:]))\n"


@pytest.fixture
def venv(tmp_path):
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    for name in ("python", "accelerate"):
        (v / "bin" / name).write_text(FAKE)
        (v / "bin" / name).chmod(0o755)
    (v / ".torch-spec").write_text("torch==2.13.0\n")
    earlier = time.time() - 60
    os.utime(v / ".torch-spec", (earlier, earlier))
    (v / ".installed").touch()  # an install is done: newer than its prerequisites, nothing runs
    return v


def make(venv, *args, env=None, input=None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("TORCH_SPEC", "ARGS", "CONFIG", "MAKEFLAGS")}
    return subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", *args], capture_output=True,
                          text=True, env={**environ, **(env or {})}, input=input)


def argv(out: str) -> list[list[str]]:
    return [json.loads(line[len("ARGV "):]) for line in out.splitlines() if line.startswith("ARGV ")]


def test_a_list_value_in_args_survives_the_shell(venv):
    r = make(venv, "eval", "ARGS=base=/m/sd models=[r0=runs/r0/dpok, r1=runs/r1/dpok] samples_per_prompt=2")
    assert r.returncode == 0, r.stderr
    (words,) = argv(r.stdout)
    assert words[:2] == ["-m", "pipelines.evaluate"]
    assert parse_overrides(words[2:]) == {"base": "/m/sd", "models": ["r0=runs/r0/dpok", "r1=runs/r1/dpok"],
                                          "samples_per_prompt": 2}


def test_config_reaches_accelerate_launch_as_it_reaches_finetune(venv):
    args = ("METHOD=rwl", "CONFIG=finetune/configs/sd15.yaml", "ARGS=model.pipeline=/m/sd")
    single = argv(make(venv, "finetune", *args).stdout)[0]
    multi = argv(make(venv, "finetune-multi", *args, "LAUNCH_ARGS=--num_processes 2").stdout)[0]
    assert multi == ["launch", "--num_processes", "2"] + single
    assert single == ["-m", "pipelines.finetune", "--config", "finetune/configs/sd15.yaml", "method=rwl",
                      "model.pipeline=/m/sd"]


def test_an_explicit_new_torch_spec_reinstalls_and_the_default_does_not(venv):
    assert argv(make(venv, "install").stdout) == []  # stamped: nothing to do
    r = make(venv, "install", "TORCH_SPEC=torch==2.6.0 --index-url https://example.invalid/cu124")
    calls = argv(r.stdout)
    assert calls[0][:5] == ["-m", "pip", "-qq", "install", "--force-reinstall"] and "torch==2.6.0" in calls[0]
    assert calls[1][-2:] == ["-e", ".[dev]"]  # then the project again
    assert (venv / ".torch-spec").read_text().strip().startswith("torch==2.6.0")
    assert argv(make(venv, "install", "TORCH_SPEC=torch==2.6.0 --index-url https://example.invalid/cu124").stdout) == []
    assert argv(make(venv, "install").stdout) == []  # the default never replaces an explicit build


def test_a_venv_made_before_the_stamp_is_left_alone(venv):
    (venv / ".torch-spec").unlink()
    assert argv(make(venv, "install").stdout) == []
    assert (venv / ".torch-spec").exists()


def test_clean_keeps_datasets_and_clean_datasets_asks(venv):
    assert "datasets" not in make(venv, "-n", "clean").stdout
    r = make(venv, "-n", "clean-datasets")
    assert "read -r -p" in r.stdout  # asks unless CONFIRM=datasets
    r = make(venv, "clean-datasets", input="no\n")
    assert r.returncode != 0 and "kept datasets/" in r.stdout


def test_rater_passwd_target_calls_the_passwd_command(venv):
    (words,) = argv(make(venv, "rater-passwd", "RATER=alice", "RATERS_FILE=/tmp/r.json").stdout)
    assert words == ["-m", "pipelines.raters", "--file", "/tmp/r.json", "passwd", "alice"]


def test_pyproject_torch_floor_covers_what_the_code_calls():
    floor = re.search(r'"torch>=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert floor, "pyproject names a torch floor"
    # core/compile.py sets torch._dynamo.config.recompile_limit and tools/bench.py calls
    # torch.compiler.set_stance: both are torch 2.6's names
    assert (int(floor[1]), int(floor[2])) >= (2, 6)
    assert "recompile_limit" in (ROOT / "core" / "compile.py").read_text()
