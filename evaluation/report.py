"""The demo's report: results table like the papers', learning curves, before/after grids, and a
reward-hacking check that sets reward gains beside oracle gains."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.curves import check_curve
from core.jsonable import json_safe
from evaluation.compare import NO_FRONTIER, ModelEval, frontier_table, off_palette_alarms
from shapes.oracle import ALIGNMENT_KEYS

HACK_TOLERANCE = 0.02  # an oracle drop smaller than 2 points is noise at these sample sizes


def results_json(evals: list[ModelEval], reward_metrics: dict, seconds: dict[str, float]) -> dict:
    """``{model: {targets: {color, count, background, combination, overall}, generalization:
    {overall}, controls: {overall}, reward, fidelity, per_prompt}, reward_model, seconds, hacking}``
    (figures are shares in [0, 1]; the report prints percentages)."""
    out: dict = {}
    for e in evals:
        out[e.name] = {"targets": {k: e.alignment[k] for k in ALIGNMENT_KEYS},
                       "generalization": {k: e.generalization.get(k, float("nan")) for k in ALIGNMENT_KEYS},
                       "controls": {k: e.controls[k] for k in ALIGNMENT_KEYS}, "reward": e.reward,
                       "fidelity": e.fidelity, "n_images": e.n_images, "per_prompt": dict(e.per_prompt),
                       "off_palette": dict(e.off_palette)}
        if e.gain is not None:  # the targets' gain over the base and its paired standard error
            out[e.name]["gain"], out[e.name]["gain_se"] = e.gain, e.gain_se
        if e.keep is not None:  # against the base at the same seeds (evaluation.keep)
            out[e.name]["keep"] = asdict(e.keep)
        if e.frontier or e.samplers:  # read against the frontier and floor; further samplers (evaluation.frontier)
            out[e.name]["scale"] = e.scale
            out[e.name]["frontier"] = {m: asdict(f) for m, f in e.frontier.items()}
            out[e.name]["samplers"] = [asdict(sk) for sk in e.samplers]
    out["reward_model"] = reward_metrics
    out["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    out["hacking"] = hacking_check(evals)
    return out


def hacking_check(evals: list[ModelEval]) -> dict[str, dict]:
    """Per fine-tuned model: reward gain, oracle gain per attribute and on control prompts, the rise
    of its off-palette share over the base's per prompt set, and sentences naming every place where
    the reward rose while oracle alignment fell, or the off-palette share rose (the hacking alarm)."""
    base = next(e for e in evals if e.name == "base")
    alarms = off_palette_alarms([base] + [e for e in evals if e.name != "base"])
    out = {}
    for e in evals:
        if e.name == "base":
            continue
        d_reward = e.reward - base.reward
        d_align = {k: e.alignment[k] - base.alignment[k] for k in ALIGNMENT_KEYS}
        d_ctrl = {k: e.controls[k] - base.controls[k] for k in ALIGNMENT_KEYS}
        findings = []
        if d_reward > 0:
            for where, deltas in (("target prompts", d_align), ("control prompts", d_ctrl)):
                for k, v in deltas.items():
                    if not math.isnan(v) and v < -HACK_TOLERANCE:
                        findings.append(f"{e.name} raised the learned reward by {d_reward:+.3f} while oracle "
                                        f"alignment on {k} ({where}) fell by {100 * -v:.1f} points: "
                                        f"the reward is being hacked there.")
        findings += [a for a in alarms if a.startswith(f"{e.name}: ")]
        d_off = {k: v - base.off_palette.get(k, float("nan")) for k, v in e.off_palette.items()}
        out[e.name] = {"reward_gain": d_reward, "oracle_gain": d_align, "controls_gain": d_ctrl,
                       "off_palette_gain": d_off, "findings": findings}
    return out


# the methods that fine-tune on the raters' labels with no reward model (finetune.preference), as the
# report names them
LABEL_TEXT = {"dpo": "Diffusion-DPO on their ranking pairs", "kto": "Diffusion-KTO on their binary answers"}


def learning_curves(histories: dict[str, list[dict]], path: Path, curves: dict[str, list[dict]] | None = None) -> None:
    """DPOK: reward mean and KL per round; RWL: loss terms per step; with ``curves``, the oracle's
    alignment of each DPOK run's samples (fixed prompts and seeds) by round; DPO / KTO (when run):
    their loss per step; DRaFT + Focus-N-Fix (``draft_region``, when run): its reward and
    objective per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {name: histories[name] for name in LABEL_TEXT if histories.get(name)}
    draft = histories.get("draft_region") or []
    extra = bool(labels) + bool(draft)  # panels beyond the four every demo has
    fig, axes = plt.subplots(1, 4 + extra, figsize=(17 + 4 * extra, 3.4))
    rwl = histories.get("rwl") or []
    dpok = histories.get("dpok") or []
    if dpok:
        r = [h["round"] for h in dpok]
        axes[0].plot(r, [h["reward_mean"] for h in dpok], marker="o")
        axes[1].plot(r, [h["kl"] for h in dpok], marker="o")
        axes[0].set(title="DPOK: mean reward of the round's samples", xlabel="round", ylabel="reward")
        axes[1].set(title="DPOK: KL to the base model (per step)", xlabel="round", ylabel="KL (nats)")
    if rwl:
        s = [h["step"] for h in rwl]
        axes[2].plot(s, _smooth([h["loss_model"] for h in rwl]), label="reward-weighted (D_model)")
        axes[2].plot(s, _smooth([h["loss_pre"] for h in rwl]), label="pre-training (D_pre)")
        axes[2].set(title="RWL: denoising losses (smoothed)", xlabel="step", ylabel="MSE")
        axes[2].legend()
    for name, points in (curves or {}).items():
        if points:
            axes[3].plot([p["round"] for p in points], [100 * p["oracle_aligned"] for p in points], marker="o", label=name)
    if curves and any(curves.values()):
        axes[3].set(title="DPOK: oracle alignment, fixed seeds", xlabel="round", ylabel="aligned (%)")
        axes[3].legend()
    for name, hist in labels.items():
        axes[4].plot([h["step"] for h in hist], _smooth([h["loss"] for h in hist]), label=name)
    if labels:
        axes[4].set(title="DPO / KTO: loss (smoothed)", xlabel="step", ylabel="loss")
        axes[4].legend()
    if draft:
        s = [h["step"] for h in draft]
        axes[-1].plot(s, _smooth([h["reward_mean"] for h in draft]), label="reward")
        axes[-1].plot(s, _smooth([h["objective"] for h in draft]), label="objective: reward − β × change outside")
        axes[-1].set(title="DRaFT + Focus-N-Fix (smoothed)", xlabel="step", ylabel="per image")
        axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_prompt_chart(evals: list[ModelEval], path: Path) -> None:
    """Per target prompt, each model's oracle pass rate (share of its samples aligned), base-sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(e for e in evals if e.name == "base")
    prompts = sorted(base.per_prompt, key=lambda t: (base.per_prompt[t], t))
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(prompts) + 1.2))
    y = np.arange(len(prompts))
    h = 0.8 / len(evals)
    for k, e in enumerate(evals):
        ax.barh(y + k * h, [100 * e.per_prompt.get(t, float("nan")) for t in prompts], height=h, label=e.name)
    ax.set_yticks(y + 0.4 - h / 2, prompts, fontsize=7)
    ax.set(xlabel="oracle pass rate (%)", xlim=(0, 100), title="Target prompts before and after fine-tuning")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(xs: list[float], k: int = 10) -> np.ndarray:
    xs = np.asarray(xs, dtype=float)
    if len(xs) < k:
        return xs
    return np.convolve(xs, np.ones(k) / k, mode="valid").tolist() + [float("nan")] * (k - 1)


def before_after(grids: dict[str, Path], path: Path) -> None:
    """The models' sample grids (same prompts, same seeds) side by side, base first."""
    images = [Image.open(p).convert("RGB") for p in grids.values()]
    gap = 12
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    h = max(im.height for im in images)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    canvas.save(path)


def _signed(v: float) -> str:
    """Points, signed (``v`` a share); n/a for NaN."""
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:+.1f}"


def _fmt(v: float, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


TARGET_TEXT = {
    "rule": "Oracle alignment (%) on the target prompts: the prompts the raters found sometimes right (the "
            "target rule on the round's labels; both methods fine-tune on them); generalization = held-out "
            "prompts never fine-tuned on, whose labels the reward never trained on",
    "heldout": "Oracle alignment (%) on the target prompts: the held-out prompts, whose attribute combinations the "
               "base model never saw in training (both methods fine-tune on them)",
    "train": "Oracle alignment (%) on the train prompts (both methods fine-tune on them)",
    "all": "Oracle alignment (%) on all shapes-world prompts (both methods fine-tune on them)",
}


def _counts(method: str, labels: dict) -> str:
    """What a DPO / KTO run learnt from, in words (its metrics.json's labels summary)."""
    if method == "dpo":
        return (f"{labels['ranking_pairs']} ranking pairs, {labels['tied_pairs']} ties"
                + (f", {labels['binary_pairs']} good-vs-bad pairs" if labels.get("binary_pairs") else ""))
    return f"{labels['images']} images, {labels['good']} judged good"


def markdown(results: dict, evals: list[ModelEval], grid_names: list[str], prompts_txt: str) -> str:
    cols = ALIGNMENT_KEYS
    lines = ["# Shapes-world demo: collect -> reward -> fine-tune", "",
             TARGET_TEXT.get(results.get("target", "heldout"), f"Oracle alignment (%) on the {results.get('target')} prompts")
             + ", same seeds for every model (seeds no fine-tuning stage used); controls = train prompts with one "
             "or two objects, never fine-tuned on.", "",
             "| model | " + " | ".join(cols)
             + " | generalization overall | controls overall | mean reward | fidelity (CLIP-FD, lower is better) |",
             "|---|" + "---|" * (len(cols) + 4)]
    for e in evals:
        lines.append(f"| {e.name} | " + " | ".join(_fmt(e.alignment[c]) for c in cols)
                     + f" | {_fmt(e.generalization.get('overall', float('nan')))} | {_fmt(e.controls['overall'])}"
                     f" | {_fmt(e.reward, False)} | {_fmt(e.fidelity, False)} |")
    if results.get("region_weight") is not None:
        lines += ["", "draft_region: Focus-N-Fix as its paper runs it, on reward backpropagation (DRaFT-1, the same "
                  f"reward and targets): each image's reward minus {results['region_weight']:g} × its change, from "
                  "the base model's image of the same noise, outside the problem region the reward's region head "
                  "marks on that image (the region head learnt from the raters' marks); the penalty's gradient "
                  "lands on the pixels it protects."]
    if results.get("label_methods"):
        lines += ["", "From the raters' labels of the targets, no reward model: " + "; ".join(
            f"{m}: {LABEL_TEXT[m]} ({_counts(m, v)}), {v['steps']} steps" for m, v in results["label_methods"].items())
            + "."]
    gains = [f"{e.name} {100 * e.gain:+.1f} ± " + ("n/a" if math.isnan(e.gain_se) else f"{100 * e.gain_se:.1f}")
             for e in evals if e.gain is not None]
    if gains:
        lines += ["", "Gain over the base on these prompts (points), ± its standard error over the seeds "
                  "(differences paired image by image: same prompt, same seed): " + "; ".join(gains) + "."]
    keeps = [e for e in evals if e.keep is not None]
    if keeps:
        lines += ["", "Keep what is right, against the base at the same seeds on these prompts: of the images the "
                  "base drew wrong, the share the model draws right (fixed); of those it drew right, the share the "
                  "model draws wrong (broken); the mean share of pixels moved on the base-right images (a channel "
                  "changed by more than 40 of 255); on the base-wrong images, the share of the oracle's problem "
                  "region that moved and of the region a fix should leave alone (the right objects and "
                  "background) that moved. Broken (changed): only base-right images with at least 2 % of their "
                  "pixels moved; unchanged: those with fewer.", "",
                  "| model | fixed | broken | broken (changed) | base-right unchanged | pixels moved (base-right) | "
                  "moved: problem region / leave alone |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {e.name} | {_fmt(e.keep.fixed)} % of {e.keep.n_base_wrong} | {_fmt(e.keep.broken)} % of "
                  f"{e.keep.n_base_right} | {_fmt(e.keep.broken_changed)} % | {_fmt(e.keep.unchanged)} % | "
                  f"{_fmt(e.keep.moved_base_right)} % | {_fmt(e.keep.moved_inside)} % / "
                  f"{_fmt(e.keep.moved_outside)} % |" for e in keeps]
        front = frontier_table(evals, "the evaluation's η")
        lines += [""] + (front or [NO_FRONTIER])
    if results.get("targets_chosen"):
        lines += ["", f"Target prompts ({len(results['targets_chosen'])}): " + "; ".join(results["targets_chosen"]),
                  "", "![per-prompt pass rates](per_prompt.png)"]
    lines += ["", "## Reward model", ""]
    for view, rm in results.get("reward_model", {}).items():
        lines += [f"{view}:", ""]
        lines += [f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in rm.items()
                  if not isinstance(v, (dict, list))]
        lines.append("")
    base_off = results.get("base", {}).get("off_palette", {}).get("targets", float("nan"))
    lines += ["", "## Reward hacking check", "",
              "Off-palette objects: the share of the objects in a model's samples of the target prompts whose "
              f"colour no palette name fits (base: {_fmt(base_off)} %), its rise over the base in points; a rise "
              "of more than 2 points on any prompt set is flagged below.", "",
              "| model | reward gain | oracle gain (overall) | count | color | background | controls | off-palette objects (rise) |",
              "|---|---|---|---|---|---|---|---|"]
    any_finding = False
    for name, h in results["hacking"].items():
        g, c = h["oracle_gain"], h["controls_gain"]
        off = results.get(name, {}).get("off_palette", {}).get("targets", float("nan"))
        rise = h.get("off_palette_gain", {}).get("targets", float("nan"))
        lines.append(f"| {name} | {h['reward_gain']:+.3f} | {100 * g['overall']:+.1f} | {100 * g['count']:+.1f} | "
                     f"{100 * g['color']:+.1f} | {100 * g['background']:+.1f} | {100 * c['overall']:+.1f} | "
                     f"{_fmt(off)} ({_signed(rise)}) |")
    lines.append("")
    for name, h in results["hacking"].items():
        for f in h["findings"]:
            lines.append(f"- **{f}**")
            any_finding = True
    if not any_finding:
        lines.append("- No attribute or control set lost oracle alignment while the reward rose, and no model's "
                     "off-palette share rose: no sign of reward hacking at this sample size.")
    lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)", ""]
    curves = {m: c for m, c in (results.get("curves") or {}).items() if c}
    if curves:
        lines += ["Oracle curves (fixed seeds on the training prompts): "
                  "no later point should fall more than one standard error below the best.", ""]
        lines += [f"- {m}: {check_curve(c).describe()}" for m, c in curves.items()] + [""]
    lines += ["## Samples before / after (same prompts, same seeds)", "",
              f"Columns: {', '.join(grid_names)}. Rows: {prompts_txt}", "", "![samples](samples_before_after.png)", "",
              "## Time per stage (s)", ""]
    lines += [f"- {k}: {v}" for k, v in results["seconds"].items()]
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict, evals: list[ModelEval], histories: dict, grids: dict[str, Path],
          prompts_txt: str, curves: dict[str, list[dict]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    learning_curves(histories, out / "learning_curves.png", curves)
    per_prompt_chart(evals, out / "per_prompt.png")
    before_after(grids, out / "samples_before_after.png")
    md = markdown(results, evals, list(grids), prompts_txt)
    (out / "report.md").write_text(md)
    try:
        import markdown as md_lib  # optional: an HTML copy when the package is present

        (out / "report.html").write_text(md_lib.markdown(md, extensions=["tables"]))
    except ImportError:
        pass
