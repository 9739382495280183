"""Tables of a study's ``make eval`` records (metrics.json files kept in ``experiments/<study>/``):
one row per record and model, or per seed and model with each variant against today's model over
the seeds (the mean of each figure and the paired difference with its standard error; with two
seeds, half their difference).  Percentages; "–" where a record lacks a figure.

    python -m tools.eval_table experiments/region-dpok --cols targets,gain,fixed,broken,...
    python -m tools.eval_table experiments/diffcon --by-seed --cols targets,gain,controls,...

``--by-seed``: the seed is the number after ``seed`` at the end of each record's file name
(``diffcon-seed0.json``); a variant is a model named ``<today>-<variant>`` (``dpok-chi2`` against
``dpok``); records without ``models`` (a fine-tuning run's metrics) are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tools.records import read_records

COLUMNS = ("targets", "gain", "controls", "fixed", "broken", "moved_base_right", "moved_outside", "heldout",
           "heldout_colour", "off_palette_heldout")


def figures(m: dict) -> dict:
    """Every figure of one model's evaluation metrics, by column name (None where it has none)."""
    k, g, off = m.get("keep") or {}, m["generalization"], m.get("off_palette") or {}
    return {"targets": m["alignment"]["overall"], "gain": m.get("gain"), "controls": (m.get("controls") or {}).get("overall"),
            "fixed": k.get("fixed"), "broken": k.get("broken"), "moved_base_right": k.get("moved_base_right"),
            "moved_outside": k.get("moved_outside"), "heldout": g["overall"], "heldout_colour": g["color"],
            "off_palette_heldout": off.get("generalization")}


def _cell(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def by_record(records: list[tuple[str, object]], cols: tuple[str, ...]) -> list[str]:
    """One row per (record, model)."""
    lines = ["| record | model | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for file, rec in records:
        for name, m in rec["models"].items():
            f = figures(m)
            lines.append(f"| {file.removesuffix('.json')} | {name} | " + " | ".join(_cell(f[c]) for c in cols) + " |")
    return lines


def by_seed(records: list[tuple[str, object]], cols: tuple[str, ...]) -> list[str]:
    """One row per (seed, model), then each variant against today's model over the seeds (every
    column but the first: the mean, and the paired difference ± its standard error)."""
    seeds: dict[int, dict[str, dict]] = {}
    for file, rec in records:
        if "models" not in rec:  # a fine-tuning run's metrics (its learning curve), not an evaluation
            continue
        seed = int(file.removesuffix(".json").rsplit("seed", 1)[1])
        seeds.setdefault(seed, {}).update({n: figures(m) for n, m in rec["models"].items()})
    lines = ["| seed | model | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for s in sorted(seeds):
        for name, r in seeds[s].items():
            lines.append(f"| {s} | {name} | " + " | ".join(_pct(r[c]) for c in cols) + " |")
    lines += ["", "| model | vs | " + " | ".join(f"{c} (diff ± SE)" for c in cols[1:]) + " |",
              "|---|---|" + "---|" * (len(cols) - 1)]
    for name in sorted({n for models in seeds.values() for n in models if "-" in n}):
        today = name.split("-")[0]
        cells = []
        for c in cols[1:]:
            d = [seeds[s][name][c] - seeds[s][today][c] for s in seeds
                 if name in seeds[s] and seeds[s][name][c] is not None and seeds[s][today][c] is not None]
            mean = [seeds[s][name][c] for s in seeds if name in seeds[s] and seeds[s][name][c] is not None]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
            cells.append(f"{_pct(statistics.mean(mean))} ({100 * statistics.mean(d):+.1f} ± {100 * se:.1f})" if d else "–")
        lines.append(f"| {name} | {today} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", help="a study folder of experiments/")
    p.add_argument("--cols", default=",".join(COLUMNS), help=f"comma-separated, of: {', '.join(COLUMNS)}")
    p.add_argument("--by-seed", action="store_true", help="per seed, and each variant against today's model")
    a = p.parse_args(argv)
    cols = tuple(a.cols.split(","))
    if unknown := [c for c in cols if c not in COLUMNS]:
        p.error(f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    print("\n".join((by_seed if a.by_seed else by_record)(read_records(Path(a.study)), cols)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
