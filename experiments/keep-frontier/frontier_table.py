"""The keep table of this study read against each plain method's frontier and floor, over every seed.

Per seed S several evaluations at the same seeds and samplers: the demo's (`eval-*-frontier-*-seedS.json`:
base, plain DPOK at scales 0.1, 0.25, 0.5 and 1, RWL, region-aware DPOK), plain DRaFT's own frontier
(`eval-*-draft-frontier-*`) and others of the other models (`eval-*-keep-*-seedS.json` ...).  The
base's verdicts must agree image for image (same seeds, same sampler), so every model is read against
every frontier of its seed with evaluation.frontier's own functions, as `make eval` reads the models
it samples itself.

    PYTHONPATH=. .venv/bin/python experiments/keep-frontier/frontier_table.py   # the tables of README.md
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from evaluation.frontier import FrontierPoint, frontier_at, read_frontier
from tools.records import read_records

STUDY = Path(__file__).parent


def _samplers(m: dict) -> list[tuple[str, dict | None, float | None, float | None]]:
    """(sampler name, keep figures, gain, gain's SE) of one model's record: the evaluation's η, then
    each keep η."""
    return [("η = 1", m.get("keep"), m.get("gain"), m.get("gain_se"))] + \
        [(f"η = {s['eta']:g}", s.get("keep"), s.get("gain"), s.get("gain_se")) for s in m.get("samplers", [])]


def _points(rec: dict) -> dict | None:
    """The frontier points (name: model record) of one evaluation; None when it holds no frontier."""
    return {n: m for n, m in rec["models"].items() if m.get("frontier_point")} or None


def readings(records: list[tuple[str, dict]]) -> list[dict]:
    """One row per (seed, sampler, model, frontier) of every evaluation: each model, the frontiers'
    points among them, read against every frontier its seed's evaluations hold (plain DPOK's, and
    e.g. plain DRaFT's)."""
    by_seed: dict[int, list[dict]] = {}
    for file, rec in records:
        if file.startswith("eval-") and "models" in rec:
            by_seed.setdefault(int(file.removesuffix(".json").rsplit("seed", 1)[1]), []).append(rec)
    rows = []
    for seed, recs in sorted(by_seed.items()):
        fronts = {}  # the frontier model's name (its scale-1 point) -> its points
        for r in recs:
            points = _points(r)
            if points:
                fronts[next(n for n, m in points.items() if m["scale"] == 1)] = points
        if "dpok" not in fronts:
            sys.exit(f"seed {seed}: no evaluation holds plain DPOK's frontier")
        base = recs[0]["models"]["base"]
        read = {"base"}  # a model sampled in two evaluations (the same seeds, so the same figures) is read once
        for rec in recs:
            if rec["models"]["base"]["aligned"] != base["aligned"]:
                sys.exit(f"seed {seed}: the base's verdicts differ between the evaluations (other seeds?)")
            for name, m in rec["models"].items():
                if name in read:
                    continue
                read.add(name)
                for front_name, points in fronts.items():  # plain DRaFT's points against DPOK's too
                    rows += _read(seed, name, m, front_name, points)
    return rows


def _read(seed: int, name: str, m: dict, front_name: str, points: dict) -> list[dict]:
    """``m``'s rows (one a sampler) read against the frontier ``points`` of ``front_name``."""
    rows = []
    for j, (sampler, keep, gain, gain_se) in enumerate(_samplers(m)):
        if keep is None:
            continue
        scaled = [(p["scale"], *_samplers(p)[j][1:3]) for p in points.values()]  # (scale, keep, gain)

        def line(fig: str) -> list[FrontierPoint]:
            return [FrontierPoint(s, g, k[fig], k["n_base_right"]) for s, k, g in scaled]
        moved = line("moved_base_right")
        r = read_frontier(line("broken"), gain, keep["broken"], keep["n_base_right"], "broken")
        rc = read_frontier(line("broken_changed"), gain, keep["broken_changed"], keep["n_base_right"],
                           "broken_changed")
        rows.append({"seed": seed, "sampler": sampler, "model": name, "frontier_of": front_name,
                     "gain": gain, "gain_se": gain_se,
                     "n": keep["n_base_right"], "broken": r, "changed": rc, "point": name in points,
                     "moved": keep["moved_base_right"], "moved_frontier": frontier_at(moved, gain)[0],
                     "heldout": (m.get("generalization") or {}).get("overall", math.nan)})
    return rows


def _p(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{100 * v:.1f}"


def table(rows: list[dict]) -> list[str]:
    out = ["| seed | sampler | model | frontier of | gain | broken % (of n) | frontier at its gain | floor | margin | "
           "changed: broken / frontier / floor / margin | pixels moved on base-right: model / frontier | held-out |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["broken"], r["changed"]
        out.append(f"| {r['seed']} | {r['sampler']} | {r['model']} | {r['frontier_of']} | "
                   f"{100 * r['gain']:+.1f} ± {100 * r['gain_se']:.1f} "
                   f"({_p(b.gain_share)} % of plain) | {_p(b.rate)} ({r['n']}) | {_p(b.frontier)} | {_p(b.floor)} | "
                   f"{100 * b.margin:+.1f} ± {100 * b.margin_se:.1f} | "
                   f"{_p(c.rate)} / {_p(c.frontier)} / {_p(c.floor)} / "
                   f"{100 * c.margin:+.1f} ± {100 * c.margin_se:.1f} | {_p(r['moved'])} / {_p(r['moved_frontier'])} | "
                   f"{_p(r['heldout'])} |")
    return out


def summary(rows: list[dict]) -> list[str]:
    """Each model and sampler over the seeds: the mean gain and margins, and how many seeds pass."""
    out = ["| sampler | model | frontier of | seeds | gain (mean) | gain share | margin (mean ± SE over seeds) | "
           "margin, changed only | seeds meeting the target |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["sampler"], r["model"], r["frontier_of"]) for r in rows if not r["point"]})
    for sampler, model, front in keys:
        rs = [r for r in rows if (r["sampler"], r["model"], r["frontier_of"]) == (sampler, model, front)]

        def mean_se(vals):
            vals = [v for v in vals if math.isfinite(v)]
            if not vals:
                return "–"
            se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else math.nan
            return f"{100 * statistics.mean(vals):+.1f} ± {_p(se)}"
        meets = sum(bool(r["broken"].meets_target) for r in rs)
        out.append(f"| {sampler} | {model} | {front} | {len(rs)} | "
                   f"{100 * statistics.mean(r['gain'] for r in rs):+.1f} | "
                   f"{_p(statistics.mean(r['broken'].gain_share for r in rs))} % | "
                   f"{mean_se([r['broken'].margin for r in rs])} | {mean_se([r['changed'].margin for r in rs])} | "
                   f"{meets} of {len(rs)} |")
    return out


def main(argv: list[str]) -> int:
    rows = readings(read_records(Path(argv[0]) if argv else STUDY))
    print("\n".join(table(rows) + [""] + summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
