"""Issue 59's label-scarce study: the loops' results.json -> records.jsonl, the conclusion tables
and the study's two plots.

    python experiments/loop-scarce/summarize.py [reports folder, default reports]

Reads every ``<reports>/scarce-<arm>-b<budget>[-kl<w>][-klb<nats>][-nokeep][-mix]-s<seed>/results.json``
(experiments/loop-scarce/run.sh), appends the ones not yet recorded to records.jsonl (keyed by
name), and prints per regime (budget, KL weight, selection): each seed's round-0-target gain after each round
for every arm, then the paired differences across seeds (mean ± standard error between seeds) the
issue's targets name; for the mix regime (issue 79) each round's model against its start, with the
label-based check on it.  Writes ``gain_vs_labels.png`` and ``gain_vs_kl.png`` beside this file:
each arm's rounds (mean over seeds), the one-shot control and the oracle upper bound.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from tools.records import machine

HERE = Path(__file__).parent
NAME = re.compile(r"scarce-(optimistic|greedy|random)-b(\d+)(?:-kl([0-9.]+))?(?:-klb([0-9.]+))?(?:-(nokeep))?"
                  r"(?:-(mix))?-s(\d+)$")
ARMS = ("optimistic", "greedy", "random")
ISSUE43_ONE_SHOT = 0.280  # the one-shot control at 100 % of the labels (experiments/closed-loop, 2 seeds)


def load(reports: Path) -> dict[str, dict]:
    """Every recorded loop by name (``scarce-...-s<seed>``), its results.json as the record, after
    filing the new ones in records.jsonl as tools.records keeps records (``loop-<date>-<name>.json``,
    with the machine as ``device``: the results page lists them)."""
    records = {}
    path = HERE / "records.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            records[row["file"].split("-", 4)[-1].removesuffix(".json")] = row["record"]
    new = []
    for f in sorted(reports.glob("scarce-*/results.json")):
        name = f.parent.name
        if NAME.match(name) and name not in records:
            records[name] = {**json.loads(f.read_text()), "device": machine()}
            date = datetime.fromtimestamp(f.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
            new.append({"file": f"loop-{date}-{name}.json", "record": records[name]})
    with path.open("a") as out:
        for row in new:
            out.write(json.dumps(row) + "\n")
    return records


def mean_se(xs: list[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan, 0
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan
    return m, se, len(xs)


def fmt(xs: list[float]) -> str:
    m, se, n = mean_se(xs)
    if not n:
        return "-"
    each = ", ".join(f"{100 * x:+.1f}" for x in xs)
    return f"{100 * m:+.1f} ± {100 * se:.1f} (n={n}: {each})" if n > 1 else f"{100 * m:+.1f} (one seed)"


def regimes(records: dict) -> dict[tuple[int, str, str], dict[tuple[str, int], dict]]:
    """(budget, KL weight, selection) -> (arm, seed) -> record; selection "mix" for run.sh's SELECT=mix
    (issue 79's re-run, its rounds judged by the round check), else "arm" (the arm's own), with the
    KL budget (-klb, removed since) or keep_best=false (-nokeep) where a run had them."""
    out: dict = {}
    for name, r in records.items():
        arm, budget, kl, klb, nokeep, mix, seed = NAME.match(name).groups()
        selection = ((mix or "arm") + (f", KL budget {klb}" if klb else "")
                     + (", keep_best false" if nokeep else ""))
        out.setdefault((int(budget), kl or "0.01", selection), {})[(arm, int(seed))] = r
    return out


def table(runs: dict, budget: int, kl: str, selection: str) -> None:
    print(f"\n## {budget} % budget, KL weight {kl}{', selection ' + selection if selection != 'arm' else ''}\n")
    print("| seed | arm | labels after rounds 0 / 1 / 2 | round-0-target gain after rounds 0 / 1 / 2 (± se) "
          "| KL from base | one-shot (labels, gain, KL) | oracle (gain, KL) |")
    print("|---|---|---|---|---|---|---|")
    for seed in sorted({s for _, s in runs}):
        for arm in ARMS:
            res = runs.get((arm, seed))
            if res is None:
                continue
            rows = res["rounds"]
            labels = " / ".join(str(r["labels_spent"]) for r in rows)
            gains = " / ".join(f"{100 * r['round0_gain']:+.1f} ± {100 * r['round0_gain_se']:.1f}" for r in rows)
            kls = " / ".join(f"{r.get('kl', math.nan):.2f}" for r in rows)
            o, u = res.get("one_shot"), res.get("oracle")
            shot = f"{o['labels_spent']}, {100 * o['round0_gain']:+.1f} ± {100 * o['round0_gain_se']:.1f}, " \
                   f"{o.get('kl', math.nan):.2f}" if o else ""
            orc = f"{100 * u['round0_gain']:+.1f} ± {100 * u['round0_gain_se']:.1f}, {u.get('kl', math.nan):.2f}" if u else ""
            print(f"| {seed} | {arm} | {labels} | {gains} | {kls} | {shot} | {orc} |")


def one_shot_gain(runs: dict, seed: int) -> float | None:
    """The round-0-target gain of the seed's one-shot control (run beside one arm), if any."""
    for arm in ARMS:
        res = runs.get((arm, seed))
        if res is not None and "one_shot" in res:
            return res["one_shot"]["round0_gain"]
    return None


def conclusions(runs: dict) -> None:
    seeds = sorted({s for _, s in runs})

    def last(arm):
        return lambda s: None if (arm, s) not in runs else runs[(arm, s)]["rounds"][-1]["round0_gain"]

    def shot(s):
        return one_shot_gain(runs, s)

    def diff(a, b):
        return [a(s) - b(s) for s in seeds if a(s) is not None and b(s) is not None]

    print("\nPaired across seeds (round-0-target gain after round 2, points; mean ± se between seeds):")
    for what, a, b in (("optimistic - one-shot", last("optimistic"), shot), ("greedy - one-shot", last("greedy"), shot),
                       ("optimistic - greedy", last("optimistic"), last("greedy")),
                       ("optimistic - random", last("optimistic"), last("random"))):
        print(f"- {what}: {fmt(diff(a, b))}")
    for arm in ARMS:
        print(f"- {arm} gain: {fmt([last(arm)(s) for s in seeds if last(arm)(s) is not None])}")
    print(f"- one-shot gain: {fmt([shot(s) for s in seeds if shot(s) is not None])}")
    falls = {f"{arm}-s{s}": runs[(arm, s)]["checks"].get("no_round_falls_back", {}).get("holds")
             for arm in ARMS for s in seeds if (arm, s) in runs}
    print(f"- no round falls back by more than its se: {falls}")
    reach = {f"{arm}-s{s}": [r["labels_spent"] for r in runs[(arm, s)]["rounds"] if r["round0_gain"] >= ISSUE43_ONE_SHOT]
             for arm in ARMS for s in seeds if (arm, s) in runs}
    print(f"- labels at which each loop first reaches issue 43's 100 %-budget one-shot gain "
          f"(+{100 * ISSUE43_ONE_SHOT:.1f}): { {k: (v[0] if v else None) for k, v in reach.items()} }")


def round_checks(runs: dict) -> None:
    """Issue 79: each round's model against the model its fine-tuning started from (the oracle, paired
    on the round-0 targets: evaluation.loop_report's ``vs_start``), round k's label-based check on
    round k-1's model beside it, and which model round k continued from."""
    print("\n| seed | arm | round | started from | oracle: gain over its start (verdict) "
          "| next round's label check on it | next round started from |")
    print("|---|---|---|---|---|---|---|")
    totals = {"checked": 0, "fell_back": 0, "caught": 0, "held": 0, "false_alarms": 0}
    for (arm, seed), res in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows = res["rounds"]
        for k, r in enumerate(rows):
            v = r["vs_start"]
            start = "base" if v["from"] is None else f"round {v['from']}"
            nxt = rows[k + 1] if k + 1 < len(rows) else None
            label = "-" if nxt is None else nxt["round_check"].get("verdict", "refused") + \
                (" (biased)" if nxt["round_check"].get("biased_sample") else "")
            start_next = None if nxt is None else nxt["vs_start"]["from"]
            cont = "-" if nxt is None else "base" if start_next is None else f"round {start_next}"
            print(f"| {seed} | {arm} | {k} | {start} | {100 * v['gain']:+.1f} ± {100 * v['gain_se']:.1f} "
                  f"({v['verdict']}) | {label} | {cont} |")
        for key, n in res["checks"]["round_check_catches"]["figure"].items():
            totals[key] += n
    print(f"\n- the label check over these loops: caught {totals['caught']} of the {totals['fell_back']} rounds the "
          f"oracle says fell back; {totals['false_alarms']} false alarms in the {totals['held']} that did not "
          f"({totals['checked']} checks on a random share)")


def keeps_up(by_regime: dict) -> None:
    """Every loop against its seed's one-shot control (same budget and KL weight, same round 0),
    split by whether its reward_keeps_up check held: does the check tell when the rounds paid?"""
    split: dict[bool | None, list[tuple[str, float]]] = {}
    for (budget, kl, selection), runs in sorted(by_regime.items()):
        for (arm, s), r in sorted(runs.items()):
            control = one_shot_gain(runs, s)
            if control is not None:
                holds = r["checks"].get("reward_keeps_up", {}).get("holds")
                split.setdefault(holds, []).append((f"{budget}%-kl{kl}-{selection}-{arm}-s{s}",
                                                    r["rounds"][-1]["round0_gain"] - control))
    print("\n## Loop minus its one-shot control, by the reward-keeps-up check\n")
    for holds, rows in sorted(split.items(), key=lambda kv: str(kv[0])):
        beat = sum(d > 0 for _, d in rows)
        print(f"- keeps_up {holds}: {beat} of {len(rows)} beat the control; {fmt([d for _, d in rows])}; "
              + ", ".join(f"{n} {100 * d:+.1f}" for n, d in rows))


def epistemic() -> None:
    """epistemic.jsonl (epistemic_compare.py, one line per loop round) as one table: mean ± se
    over the loop rounds of each spread's AUC for the reward's wrong images, its partial Spearman
    given p(1 - p), and the reward's error rate among the top quarter by each selection score
    (p(1 - p) for the margin, p(1 - p)·s for each spread; lines from before it was measured lack it)."""
    path = HERE / "epistemic.jsonl"
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print(f"\n## Does the spread point at the reward's errors? ({len(rows)} loop rounds)\n")
    print("| images | spread | AUC for wrong images | partial Spearman given p(1 - p) | top-quarter error "
          "| error of its p, all images |")
    print("|---|---|---|---|---|---|")
    def top(r: dict, score: str) -> float:
        return r.get("top_quarter_error", {}).get(score, math.nan)

    for where in ("new_images", "val_images"):
        def cell(get):
            m, se, _ = mean_se([get(r[where]) for r in rows])
            return f"{m:.2f} ± {se:.2f}"
        images = where.replace("_", " ")
        for kind in ("linear_ucb", "ensemble"):
            print(f"| {images} | {kind} | {cell(lambda r: r[kind]['auc_wrong'])} | {cell(lambda r: r[kind]['partial'])} "
                  f"| {cell(lambda r: top(r, kind))} | {cell(lambda r: r[kind]['error_rate'])} |")
        print(f"| {images} | margin p(1 - p) | | | {cell(lambda r: top(r, 'margin'))} | |")


def plots(by_regime: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for x, fname, label in (("labels_spent", "gain_vs_labels.png", "rater answers spent"),
                            ("kl", "gain_vs_kl.png", "KL from the base (nats per step, last 5 DPOK rounds)")):
        keys = sorted(by_regime)
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False, sharey=True)
        for ax, key in zip(axes[0], keys):
            runs = by_regime[key]
            for arm, style, colour in zip(ARMS, ("o-", "s--", "^:"), ("C0", "C1", "C2")):
                seeds = [s for a, s in runs if a == arm]
                if not seeds:
                    continue
                n_rounds = min(len(runs[(arm, s)]["rounds"]) for s in seeds)
                xs = [mean_se([runs[(arm, s)]["rounds"][k].get(x, math.nan) for s in seeds])[0] for k in range(n_rounds)]
                ys = [100 * mean_se([runs[(arm, s)]["rounds"][k]["round0_gain"] for s in seeds])[0] for k in range(n_rounds)]
                ax.plot(xs, ys, style, color=colour, label=f"{arm} loop (n={len(seeds)})")
            for extra, marker, colour in (("one_shot", "D", "C3"), ("oracle", "*", "gray")):
                pts = [runs[k][extra] for k in runs if extra in runs[k]]
                if not pts:
                    continue
                ys = 100 * mean_se([p["round0_gain"] for p in pts])[0]
                xs = mean_se([p.get(x, math.nan) for p in pts])[0]
                if math.isnan(xs):
                    ax.axhline(ys, color=colour, ls="-.", label=f"{extra.replace('_', '-')} (n={len(pts)})")
                else:
                    ax.plot([xs], [ys], marker, color=colour, ms=9, label=f"{extra.replace('_', '-')} (n={len(pts)})")
            if x == "labels_spent":
                ax.axhline(100 * ISSUE43_ONE_SHOT, color="k", ls=":", lw=1, label="one-shot at 100 % (issue 43)")
            ax.set_title(f"budget {key[0]} %, KL weight {key[1]}" + (f", {key[2]}" if key[2] != "arm" else ""))
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("oracle gain on the round-0 targets (points)")
        fig.tight_layout()
        fig.savefig(HERE / fname, dpi=110)
        plt.close(fig)


def main(reports: Path) -> None:
    by_regime = regimes(load(reports))
    for (budget, kl, selection), runs in sorted(by_regime.items()):
        table(runs, budget, kl, selection)
        conclusions(runs)
        if selection.startswith("mix"):
            round_checks(runs)
    keeps_up(by_regime)
    epistemic()
    plots(by_regime)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports"))
