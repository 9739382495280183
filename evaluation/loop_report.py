"""The closed loop's report (``reports/loop/``): per round, the round-0 targets and the round's own
targets, controls, held-out prompts, fidelity, the reward's accuracy on the newest images, the
hacking check, labels spent, KL from the base and wall time; plots of alignment against labels
spent and against KL from the base, with the base, the one-shot control and the oracle-reward upper
bound beside it; and the issue's target checks, each with its figure.

Gains are paired (the same prompts and seeds for every model): a gain's standard error comes from
the per-prompt differences against the base (shares over a prompt's seeds), across prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.files import write_text_atomic
from core.jsonable import json_safe
from evaluation.compare import ModelEval, off_palette_alarms

FIDELITY_TOLERANCE = 0.10  # a model's CLIP-FD may exceed the base's by this share
ACCURACY_TOLERANCE = 0.03  # the reward's accuracy on the newest images vs its round-0 figure
KL_ROUNDS = 5  # a run's KL from the base: the mean over its last this many DPOK rounds (one is noisy)


def kl_from_base(run_dir: str | Path) -> float:
    """A DPOK run's KL from the base model: the per-step KL of its policy to the base (DPOK eq. 7's
    term, nats per denoising step, on its own training prompts) over its last KL_ROUNDS rounds, read
    from its metrics.json; NaN without one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return math.nan
    kls = [row["kl"] for row in json.loads(path.read_text()).get("history", []) if row.get("kl") is not None]
    return float(np.mean(kls[-KL_ROUNDS:])) if kls else math.nan


def paired_gain(model: dict[str, float], base: dict[str, float], prompts: list[str]) -> tuple[float, float]:
    """Mean and standard error of the per-prompt alignment gain over ``prompts`` (shares in [0, 1];
    NaN standard error for fewer than 2 prompts)."""
    d = np.array([model[p] - base[p] for p in prompts if p in model and p in base])
    if len(d) == 0:
        return math.nan, math.nan
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
    return float(d.mean()), se


def _share(per_prompt: dict[str, float], prompts: list[str]) -> float:
    vals = [per_prompt[p] for p in prompts if p in per_prompt]
    return float(np.mean(vals)) if vals else math.nan


def _labels(stage: dict) -> int:
    """Rater answers of a round: binary labels (gold answers included) plus rankings."""
    return int(stage["labels"])


def results(cfg, rounds: list[dict], extra: dict, evals: list[dict], first_targets: list[str],
            seconds: float) -> dict:
    """results.json of the loop (``cfg``: its LoopConfig; ``rounds``: every round's stage summaries;
    ``extra``: the one-shot and oracle stages; ``evals``: the final evaluation's ModelEval dicts)."""
    by_name = {e["name"]: e for e in evals}
    base = by_name["base"]
    out: dict = {"seed": cfg.seed, "selection": cfg.selection, "budget": cfg.budget, "rounds": [],
                 "round0_targets": first_targets}
    spent = 0
    for r in rounds:
        k = r["round"]
        m = by_name[f"round{k}"]
        own = r["targets"]["targets"]
        spent += _labels(r["label"])
        gain, se = paired_gain(m["per_prompt"], base["per_prompt"], first_targets)
        own_gain, own_se = paired_gain(m["per_prompt"], base["per_prompt"], own)
        row = {
            "round": k, "labels": _labels(r["label"]), "labels_spent": spent,
            "images_generated": r["generate"]["images_added"],
            "images_selected": r.get("select", {}).get("selected", r["generate"]["images_added"]),
            "targets": own, "picked": r["targets"]["picked"], "kept": r["targets"]["kept"],
            "dropped": r["targets"]["dropped"],
            "round0_targets": _share(m["per_prompt"], first_targets), "round0_gain": gain, "round0_gain_se": se,
            "own_targets": _share(m["per_prompt"], own), "own_gain": own_gain, "own_gain_se": own_se,
            "controls": m["controls"]["overall"], "controls_gain": m["controls"]["overall"] - base["controls"]["overall"],
            "generalization": m["generalization"].get("overall", math.nan),
            "fidelity": m["fidelity"], "fidelity_vs_base": m["fidelity"] / base["fidelity"] - 1,
            "reward_before": r.get("reward_before", {}).get("oracle_pair_accuracy", math.nan),
            "reward_after": r["reward"].get("by_round", {}).get(str(k), {}).get("oracle_pair_accuracy", math.nan),
            "reward_val_images": r["reward"]["val_images"].get("pairwise_accuracy_vs_oracle", math.nan),
            "off_palette": m["off_palette"], "kl": kl_from_base(r["finetune"]["output_dir"]),
            "seconds": {name: s["seconds"] for name, s in r.items() if isinstance(s, dict) and "seconds" in s},
        }
        if "continued_from" in r:  # round k >= 1: its label-based check and the model its DPOK started from
            row["round_check"] = r["round_check"]
            row["continued_from"] = r["continued_from"]
        out["rounds"].append(row)
    out["base"] = {"round0_targets": _share(base["per_prompt"], first_targets), "controls": base["controls"]["overall"],
                   "generalization": base["generalization"].get("overall", math.nan), "fidelity": base["fidelity"]}
    if "one_shot" in extra:
        m = by_name["one_shot"]
        gain, se = paired_gain(m["per_prompt"], base["per_prompt"], first_targets)
        out["one_shot"] = {"labels_spent": _labels(rounds[0]["label"]) + _labels(extra["one_shot"]["label"]),
                           "round0_targets": _share(m["per_prompt"], first_targets), "round0_gain": gain,
                           "round0_gain_se": se, "controls": m["controls"]["overall"], "fidelity": m["fidelity"],
                           "length": extra["one_shot"]["finetune"]["length"],
                           "kl": kl_from_base(extra["one_shot"]["finetune"]["output_dir"])}
    if "oracle" in extra:
        m = by_name["oracle"]
        gain, se = paired_gain(m["per_prompt"], base["per_prompt"], first_targets)
        out["oracle"] = {"round0_targets": _share(m["per_prompt"], first_targets), "round0_gain": gain,
                         "round0_gain_se": se, "controls": m["controls"]["overall"], "fidelity": m["fidelity"],
                         "length": extra["oracle"]["length"], "kl": kl_from_base(extra["oracle"]["output_dir"])}
    out["hacking"] = off_palette_alarms([ModelEval(**base)] + [ModelEval(**e) for e in evals if e["name"] != "base"])
    out["checks"] = checks(out)
    out["seconds"] = round(seconds, 1)
    return out


def checks(out: dict) -> dict[str, dict]:
    """The issue's targets, each with its figure and whether it holds (None: not measured here)."""
    last, first = out["rounds"][-1], out["rounds"][0]
    res = {
        "round0_targets_gain>=40": {"figure": last["round0_gain"], "holds": last["round0_gain"] >= 0.40},
        "controls_not_below_base": {"figure": last["controls_gain"], "holds": last["controls_gain"] >= -0.02},
        # issue 59: no round falls below the one before on the round-0 targets by more than its standard error
        "no_round_falls_back": {
            "figure": [b["round0_gain"] - a["round0_gain"] for a, b in zip(out["rounds"], out["rounds"][1:])],
            "holds": all(b["round0_gain"] >= a["round0_gain"] - a["round0_gain_se"]
                         for a, b in zip(out["rounds"], out["rounds"][1:])) if len(out["rounds"]) > 1 else None},
        "fidelity_within_10%": {"figure": last["fidelity_vs_base"], "holds": last["fidelity_vs_base"] <= FIDELITY_TOLERANCE},
        "reward_keeps_up": {
            "figure": [r["reward_before"] for r in out["rounds"][1:]], "round0": first["reward_val_images"],
            "holds": _keeps_up([r["reward_before"] for r in out["rounds"][1:]], first["reward_val_images"])},
    }
    if "one_shot" in out:
        margin = last["round0_gain"] - out["one_shot"]["round0_gain"]
        res["beats_one_shot_by>=5"] = {"figure": margin, "holds": margin >= 0.05}
    return res


def _keeps_up(accuracies: list[float], round0: float) -> bool | None:
    """Whether the reward's accuracy on every later round's new images stays within
    ACCURACY_TOLERANCE below its round-0 figure (higher is no failure); None when no round measured it."""
    measured = [a for a in accuracies if a is not None and not math.isnan(a)]
    if not measured:
        return None
    return all(a >= round0 - ACCURACY_TOLERANCE for a in measured)


def _pct(v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def _kl(row: dict) -> str:
    kl = row.get("kl")
    return "-" if kl is None or math.isnan(kl) else f"{kl:.3g}"


def markdown(res: dict) -> str:
    lines = [f"# The closed loop: {len(res['rounds'])} rounds, seed {res['seed']}, selection {res['selection']}, "
             f"budget {res['budget']} images a round", "",
             "Oracle alignment (%) with fresh seeds, the same for every model; gains over the base with their "
             "standard error (paired by prompt). Reward accuracy: pairwise accuracy vs the oracle on the round's "
             "images, before (the reward the policy trained against) and after retraining. Fidelity vs base: the "
             "relative change of the CLIP-FD to the reference (negative: closer than the base).", "",
             "| round | labels spent | round-0 targets (gain ± se) | own targets (gain ± se) | controls (gain) | "
             "held-out | fidelity vs base | KL from base | reward acc. before / after | new / kept / dropped targets | "
             "seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    b = res["base"]
    lines.append(f"| base | 0 | {_pct(b['round0_targets'])} | | {_pct(b['controls'])} | {_pct(b['generalization'])} | | 0 | | | |")
    for r in res["rounds"]:
        lines.append(
            f"| {r['round']} | {r['labels_spent']} | {_pct(r['round0_targets'])} ({_pct(r['round0_gain'], True)} ± "
            f"{_pct(r['round0_gain_se'])}) | {_pct(r['own_targets'])} ({_pct(r['own_gain'], True)} ± "
            f"{_pct(r['own_gain_se'])}) | {_pct(r['controls'])} ({_pct(r['controls_gain'], True)}) | "
            f"{_pct(r['generalization'])} | {_pct(r['fidelity_vs_base'], True)} % | {_kl(r)} | {_pct(r['reward_before'])} / "
            f"{_pct(r['reward_after'])} | {len(r['picked'])} / {len(r['kept'])} / {len(r['dropped'])} | "
            f"{sum(r['seconds'].values()):.0f} |")
    for name in ("one_shot", "oracle"):
        if name in res:
            o = res[name]
            lines.append(f"| {name.replace('_', '-')} | {o.get('labels_spent', '-')} | {_pct(o['round0_targets'])} "
                         f"({_pct(o['round0_gain'], True)} ± {_pct(o['round0_gain_se'])}) | | {_pct(o['controls'])} | | "
                         f"{_pct(o['fidelity'] / b['fidelity'] - 1, True)} % | {_kl(o)} | | | |")
    lines += ["", "## Targets", "", "| check | figure | holds |", "|---|---|---|"]
    for name, c in res["checks"].items():
        fig = c["figure"]
        shown = ", ".join(_pct(x) for x in fig) if isinstance(fig, list) else _pct(fig, True)
        lines.append(f"| {name} | {shown} | {c['holds']} |")
    checked = [r for r in res["rounds"] if "continued_from" in r]
    if checked:
        lines += ["", "## Round checks: which model each round continued from", "",
                  "Round k's images were made by round k-1's model; the raters' good-rate on them (the round's "
                  "random share) against the kept model's round on the same prompts (make round-check). A model "
                  "that fell back by more than one SE is not continued from.", ""]
        lines += [f"- round {r['round']}'s fine-tuning started from {r['continued_from']['model'] or 'the base model'}: "
                  f"{r['continued_from']['why']}" for r in checked]
    if res["hacking"]:
        lines += ["", "## Hacking alarm", ""] + [f"- {a}" for a in res["hacking"]]
    lines += ["", f"KL from base: {KL_ROUNDS}-round mean of the DPOK run's per-step KL to the base (nats), on its own "
              "training prompts.", "",
              f"Wall time: {res['seconds']:.0f} s. Plots: alignment_vs_labels.png, alignment_vs_kl.png.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path, x: str = "labels_spent") -> None:
    """Round-0 target alignment against ``x``: labels spent, or ``kl`` (KL from the base): the
    loop's rounds, the base, the one-shot control, the oracle-reward upper bound (a line where it
    has no x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    y = lambda r: 100 * r["round0_targets"]  # noqa: E731
    ax.plot([r.get(x, math.nan) for r in res["rounds"]], [y(r) for r in res["rounds"]], "o-", label="closed loop (round k)")
    ax.plot([0], [y(res["base"])], "D", color="gray", label="base")
    for name, style, label in (("one_shot", dict(marker="s", color="red"), "one-shot control"),
                               ("oracle", dict(marker="^", color="green"), "oracle reward (upper bound)")):
        if name in res and not math.isnan(res[name].get(x, math.nan)):
            ax.plot([res[name][x]], [y(res[name])], ls="", label=label, **style)
        elif name in res:
            ax.axhline(y(res[name]), color=style["color"], ls="--", label=label)
    ax.set_xlabel({"labels_spent": "labels spent (rater answers)",
                   "kl": "KL from the base (nats per step, last DPOK rounds)"}[x])
    ax.set_ylabel("oracle alignment on round-0 targets (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, res: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(json_safe(res), indent=1))
    write_text_atomic(out / "report.md", markdown(res))
    plot(res, out / "alignment_vs_labels.png")
    plot(res, out / "alignment_vs_kl.png", x="kl")
