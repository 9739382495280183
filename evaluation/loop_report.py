"""The closed loop's report (``reports/loop/``): per round, the round-0 targets and the round's own
targets, controls, held-out prompts, fidelity, the reward's accuracy on the newest images, the
hacking check, labels spent, KL from the base and stage time; plots of alignment against labels
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
from evaluation.round_check import verdict

FIDELITY_TOLERANCE = 0.10  # a model's CLIP-FD may exceed the base's by this share
ACCURACY_TOLERANCE = 0.03  # the reward's accuracy on the newest images vs its round-0 figure


def kl_from_base(run_dir: str | Path) -> float:
    """A fine-tuning run's KL from the base model, as its metrics.json gives it (DPOK's
    ``kl_from_base``: the per-step KL term of its last rounds, nats); NaN for a method without one."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return math.nan
    kl = json.loads(path.read_text()).get("kl_from_base")
    return math.nan if kl is None else float(kl)


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
    ``extra``: the one-shot and oracle stages; ``evals``: the final evaluation's ModelEval dicts;
    ``seconds``: every stage's time, summed, the runs a resumed loop skipped included)."""
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
        start = started_from(r)
        d, d_se = paired_gain(m["per_prompt"], by_name[f"round{start}" if start is not None else "base"]["per_prompt"],
                              first_targets)
        # the oracle's verdict on this round's model against the one its fine-tuning started from: what
        # the next round's label-based check (its round_check) tries to tell without the oracle
        row["vs_start"] = {"from": start, "gain": d, "gain_se": d_se, "verdict": verdict(d, d_se)}
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


def started_from(r: dict) -> int | None:
    """The round whose model round ``r``'s fine-tuning started from (None: the base model): round 0
    from the base, round k >= 1 from its ``continued_from`` (workflows.loop.Kept: ``round`` is the round
    whose images the model made, so the model is that round's predecessor's); a round without one (a
    loop from before round checks) from round k - 1."""
    k = r["round"]
    if k == 0:
        return None
    if "continued_from" not in r:
        return k - 1
    made = r["continued_from"]["round"]
    return made - 1 if made > 0 else None


def check_catches(rounds: list[dict]) -> dict:
    """Round k's label-based check (on round k's images) against the oracle's verdict on the model
    that made them, round k-1's against the model it started from (its ``vs_start``): the rounds
    the oracle says fell back, how many the check said fell back too, and its false alarms among
    the rest.  Checks on a biased sample (uncertainty picks alone) or refused are not counted."""
    pairs = [(rounds[k - 1]["vs_start"]["verdict"], r["round_check"]["verdict"]) for k, r in enumerate(rounds)
             if k and "verdict" in r.get("round_check", {}) and not r["round_check"]["biased_sample"]]
    fell = [label for oracle, label in pairs if oracle == "fell back"]
    rest = [label for oracle, label in pairs if oracle != "fell back"]
    return {"checked": len(pairs), "fell_back": len(fell), "caught": sum(v == "fell back" for v in fell),
            "held": len(rest), "false_alarms": sum(v == "fell back" for v in rest)}


def checks(out: dict) -> dict[str, dict]:
    """The issue's targets, each with its figure and whether it holds (None: not measured here)."""
    last, first = out["rounds"][-1], out["rounds"][0]
    res = {
        "round0_targets_gain>=40": {"figure": last["round0_gain"], "holds": last["round0_gain"] >= 0.40},
        "controls_not_below_base": {"figure": last["controls_gain"], "holds": last["controls_gain"] >= -0.02},
        # issue 79: no round's model ends more than one (paired) standard error below the model its
        # fine-tuning started from, on the round-0 targets (the oracle's verdict)
        "no_round_falls_back": {
            "figure": [r["vs_start"]["gain"] for r in out["rounds"]],
            "holds": all(r["vs_start"]["verdict"] != "fell back" for r in out["rounds"])},
        "fidelity_within_10%": {"figure": last["fidelity_vs_base"], "holds": last["fidelity_vs_base"] <= FIDELITY_TOLERANCE},
        "reward_keeps_up": {
            "figure": [r["reward_before"] for r in out["rounds"][1:]], "round0": first["reward_val_images"],
            "holds": _keeps_up([r["reward_before"] for r in out["rounds"][1:]], first["reward_val_images"])},
    }
    c = check_catches(out["rounds"])
    # issue 79: the label-based check catches >= 80 % of the rounds the oracle says fell back, with
    # <= 20 % false alarms among the rest (None: no unbiased check, or no round fell back)
    res["round_check_catches"] = {
        "figure": c, "holds": None if not c["fell_back"] else
        c["caught"] >= 0.8 * c["fell_back"] and c["false_alarms"] <= 0.2 * max(c["held"], 1)}
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


def _start(k: int | None) -> str:
    return "the base model" if k is None else f"round {k}'s model"


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
        if isinstance(fig, dict):  # round_check_catches
            shown = (f"caught {fig['caught']} of {fig['fell_back']} that fell back; {fig['false_alarms']} false "
                     f"alarms in {fig['held']}")
        else:
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
    lines += ["", "The oracle's verdict on each round's model against the model its fine-tuning started from "
              "(round-0 targets, paired):", ""]
    lines += [f"- round {r['round']} against {_start(r['vs_start']['from'])}: {_pct(r['vs_start']['gain'], True)} ± "
              f"{_pct(r['vs_start']['gain_se'])}, {r['vs_start']['verdict']}" for r in res["rounds"]]
    last = res["rounds"][-1]  # the loop's output: no later round labelled its images
    lines += ["", f"Round {last['round']}'s model, the one this loop ends with, made no labelled images, so no "
              "label check judged it: before you ship it, label a random share of its images and run `make "
              f"round-check` (docs/loop.md); if it fell back, ship {_start(last['vs_start']['from'])} instead."]
    if res["hacking"]:
        lines += ["", "## Hacking alarm", ""] + [f"- {a}" for a in res["hacking"]]
    lines += ["", "KL from base: the DPOK run's per-step KL to the base (nats) over its last rounds, on its own "
              "training prompts.", "",
              f"Stage time: {res['seconds']:.0f} s (each stage as long as it took when it ran, a resumed "
              "loop's included). Plots: alignment_vs_labels.png, alignment_vs_kl.png.", ""]
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
