"""The DiffCon regulariser study's tables (issue 60): per seed and model, and each regulariser
against today's (``dpok`` with KL, ``rwl`` with Lee et al.'s weights) over the seeds: the mean of
each figure, and the paired difference with its standard error (two seeds: half their difference).

    PYTHONPATH=. python experiments/diffcon/summarize.py experiments/diffcon
"""

import statistics
import sys
from pathlib import Path

from tools.records import read_records

COLS = ("targets", "gain", "controls", "fixed", "broken", "heldout", "heldout_colour", "off_palette_heldout")


def row(m: dict) -> dict:
    k, off = m.get("keep") or {}, m.get("off_palette") or {}
    return {"targets": m["alignment"]["overall"], "gain": m.get("gain"), "controls": m["controls"]["overall"],
            "fixed": k.get("fixed"), "broken": k.get("broken"), "heldout": m["generalization"]["overall"],
            "heldout_colour": m["generalization"]["color"], "off_palette_heldout": off.get("generalization")}


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def main(path: str) -> None:
    seeds: dict[int, dict[str, dict]] = {}
    for file, rec in read_records(Path(path)):
        if "models" not in rec:  # a fine-tuning run's metrics (its learning curve), not an evaluation
            continue
        seed = int(file.removesuffix(".json").rsplit("seed", 1)[1])
        seeds.setdefault(seed, {}).update({n: row(m) for n, m in rec["models"].items()})
    print("| seed | model | " + " | ".join(COLS) + " |\n|---|---|" + "---|" * len(COLS))
    for s in sorted(seeds):
        for name, r in seeds[s].items():
            print(f"| {s} | {name} | " + " | ".join(pct(v) for v in r.values()) + " |")
    print("\n| model | vs | " + " | ".join(f"{c} (diff ± SE)" for c in COLS if c != "targets") + " |")
    print("|---|---|" + "---|" * (len(COLS) - 1))
    names = sorted({n for models in seeds.values() for n in models if "-" in n})
    for name in names:
        today = name.split("-")[0]
        cells = []
        for c in COLS[1:]:
            d = [seeds[s][name][c] - seeds[s][today][c] for s in seeds
                 if name in seeds[s] and seeds[s][name][c] is not None and seeds[s][today][c] is not None]
            mean = [seeds[s][name][c] for s in seeds if name in seeds[s] and seeds[s][name][c] is not None]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
            cells.append(f"{pct(statistics.mean(mean))} ({100 * statistics.mean(d):+.1f} ± {100 * se:.1f})" if d else "–")
        print(f"| {name} | {today} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
