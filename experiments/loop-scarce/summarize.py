"""Issue 59's label-scarce study: the loops' results.json -> records.jsonl and the conclusion tables.

    python experiments/loop-scarce/summarize.py [reports folder, default reports]

Reads every ``<reports>/scarce-<arm>-b<budget>-s<seed>/results.json`` (experiments/loop-scarce/run.sh),
appends the ones not yet recorded to records.jsonl (keyed by name), and prints per budget: each
seed's round-0-target gain after each round for every arm, and the paired differences across
seeds (mean ± standard error between seeds) the issue's targets name.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
NAME = re.compile(r"scarce-(optimistic|greedy|random)-b(\d+)-s(\d+)$")


def load(reports: Path) -> dict[str, dict]:
    records = {}
    path = HERE / "records.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            records[r["name"]] = r
    new = []
    for f in sorted(reports.glob("scarce-*/results.json")):
        name = f.parent.name
        if NAME.match(name) and name not in records:
            records[name] = {"name": name, "results": json.loads(f.read_text())}
            new.append(records[name])
    with path.open("a") as out:
        for r in new:
            out.write(json.dumps(r) + "\n")
    return records


def mean_se(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return f"{100 * m:+.1f} (one seed)"
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    return f"{100 * m:+.1f} ± {100 * se:.1f} (n={len(xs)}: {', '.join(f'{100 * x:+.1f}' for x in xs)})"


def main(reports: Path) -> None:
    records = load(reports)
    runs: dict[tuple[str, int, int], dict] = {}
    for name, r in records.items():
        arm, budget, seed = NAME.match(name).groups()
        runs[(arm, int(budget), int(seed))] = r["results"]
    for budget in sorted({b for _, b, _ in runs}):
        print(f"\n## {budget} % budget\n")
        print("| seed | arm | labels after rounds 0 / 1 / 2 | round-0-target gain after rounds 0 / 1 / 2 (± se) | KL from base | one-shot (labels, gain) |")
        print("|---|---|---|---|---|---|")
        seeds = sorted({s for a, b, s in runs if b == budget})
        for seed in seeds:
            for arm in ("optimistic", "greedy", "random"):
                res = runs.get((arm, budget, seed))
                if res is None:
                    continue
                rows = res["rounds"]
                labels = " / ".join(str(r["labels_spent"]) for r in rows)
                gains = " / ".join(f"{100 * r['round0_gain']:+.1f} ± {100 * r['round0_gain_se']:.1f}" for r in rows)
                kl = " / ".join(f"{r.get('kl', math.nan):.3g}" for r in rows)
                o = res.get("one_shot")
                shot = f"{o['labels_spent']}, {100 * o['round0_gain']:+.1f} ± {100 * o['round0_gain_se']:.1f}" if o else ""
                print(f"| {seed} | {arm} | {labels} | {gains} | {kl} | {shot} |")

        def last(arm, seed):
            res = runs.get((arm, budget, seed))
            return None if res is None else res["rounds"][-1]["round0_gain"]

        def shot(seed):
            res = runs.get(("optimistic", budget, seed))
            return None if res is None or "one_shot" not in res else res["one_shot"]["round0_gain"]

        def diff(a, b):
            return [a(s) - b(s) for s in seeds if a(s) is not None and b(s) is not None]

        def falls(seed):
            res = runs.get(("optimistic", budget, seed))
            return None if res is None else res["checks"].get("no_round_falls_back", {}).get("holds")

        print(f"\nPaired across seeds (after round 2, points):")
        print(f"- optimistic - one-shot: {mean_se(diff(lambda s: last('optimistic', s), shot))}")
        print(f"- optimistic - greedy:   {mean_se(diff(lambda s: last('optimistic', s), lambda s: last('greedy', s)))}")
        print(f"- optimistic - random:   {mean_se(diff(lambda s: last('optimistic', s), lambda s: last('random', s)))}")
        print(f"- no round falls back (optimistic): {[falls(s) for s in seeds]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports"))
