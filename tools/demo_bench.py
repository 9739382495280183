"""``make bench ARGS="demo=true"``: ``make demo``'s stage times on this machine, with the compiled
sampling path off and on, measured in one run.

Each demo runs in a process of its own (``python -m pipelines.demo``), so that a compiled run pays
its compile as a user's first run does and no compiled code passes from one run to the next:
``eager`` (``compile=off``), ``compiled-cold`` (``compile=on``: every stage through the compiled
UNet) with an empty compile cache, and ``compiled-warm``: the same again over the cache the first
compiled run filled (what every later run on the machine pays).  The whole's ratio is what the
demo's ``compile=auto`` (every stage or none, core.compile.resolve_compile) was decided from.
Every run has the same seed and folders of its own; the table
gives each stage's seconds, and the ratio eager / compiled of each stage and of the whole, since
these machines' speed drifts between sessions but not within one run.  The figures each run
reached (targets, gains and their standard errors) come beside the times: the compiled path
agrees with eager up to float rounding, so its figures differ from eager's by no more than the
seeds' noise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.errors import UserError
from core.files import write_text_atomic

RUNS = {"eager": "off", "compiled-cold": "on", "compiled-warm": "on"}  # name -> the demo's compile=


def bench_demo(demo_args: tuple[str, ...], out: Path, runs: tuple[str, ...] = tuple(RUNS)) -> dict:
    """Run the demo once per entry of ``runs`` (keys of :data:`RUNS`, in order) with ``demo_args``
    added; write ``out``/demo.json and demo.md, keep each run's results.json and evaluation
    metrics (every image's verdict) in ``out``/demo-<run>/, and return what demo.json holds."""
    check_runs(runs)
    result: dict = {"demo_args": list(demo_args), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as tmp:
        cache = Path(tmp) / "inductor-cache"  # empty at the first compiled run, filled for the warm one
        for name in runs:
            folder = Path(tmp) / name
            cmd = [sys.executable, "-m", "pipelines.demo", f"compile={RUNS[name]}", f"root={folder / 'datasets'}",
                   f"runs={folder / 'runs'}", f"report={folder / 'report'}", *demo_args]
            print(f"bench: demo, {name}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)},
                                  stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                result["runs"][name] = {"failed": done.returncode, "wall_s": wall}
                continue
            res = json.loads((folder / "report" / "results.json").read_text())
            result["runs"][name] = {"seconds": res["seconds"], "wall_s": round(wall, 1), "figures": _figures(res)}
            kept = out / f"demo-{folder.name}"  # the run's results and per-image verdicts, for the record
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / "report" / "results.json", kept / "results.json")
            shutil.copy(folder / "report" / "eval" / "metrics.json", kept / "eval-metrics.json")
            _write(out, result)
    _write(out, result)
    return result


def check_runs(runs: tuple[str, ...]) -> None:
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise UserError(f"demo_runs={list(runs)} names no demo run or unknown ones ({unknown}).",
                        f"pick from {list(RUNS)}, e.g. demo_runs=[eager, compiled-cold].")


def _figures(res: dict) -> dict:
    """Per model: the targets' overall alignment, and for a fine-tuned one its gain and standard error."""
    models = [m for m in ("base", "rwl", "dpok", "dpok_oracle") if m in res]
    return {m: {k: res[m][k] for k in ("gain", "gain_se") if k in res[m]} | {"targets": res[m]["targets"]["overall"]}
            for m in models}


def _write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "demo.json", json.dumps(result, indent=2))
    write_text_atomic(out / "demo.md", markdown(result))


def markdown(result: dict) -> str:
    runs = {n: r for n, r in result["runs"].items() if "seconds" in r}
    stages = [s for s in next(iter(runs.values()))["seconds"]] if runs else []
    lines = ["# `make demo`, stage by stage: eager against the compiled sampling path", "",
             f"Demo arguments: {' '.join(result['demo_args']) or '(none)'}; seconds of each stage, one process "
             "per run; ratio: eager / compiled (above 1: the compiled path is faster).", "",
             "| stage | " + " | ".join(runs) + " | ratio (cold cache) | ratio (warm cache) |",
             "|---|" + "---|" * (len(runs) + 2)]
    for s in stages + ["wall"]:
        vals = {n: (r["wall_s"] if s == "wall" else r["seconds"].get(s)) for n, r in runs.items()}
        ratio = [_ratio(vals.get("eager"), vals.get(k)) for k in ("compiled-cold", "compiled-warm")]
        lines.append(f"| {s} | " + " | ".join("-" if v is None else f"{v:.0f}" for v in vals.values())
                     + f" | {ratio[0]} | {ratio[1]} |")
    lines += ["", "Figures each run reached (oracle alignment on the targets, %; gain ± standard error, points):", ""]
    for n, r in runs.items():
        cells = [f"{m} {100 * f['targets']:.1f}" + (f" ({100 * f['gain']:+.1f} ± {100 * f['gain_se']:.1f})"
                                                       if "gain" in f else "") for m, f in r["figures"].items()]
        lines.append(f"- {n}: " + "; ".join(cells))
    lines += [f"- {n}: failed with exit status {r['failed']}" for n, r in result["runs"].items() if "failed" in r]
    return "\n".join(lines) + "\n"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"
