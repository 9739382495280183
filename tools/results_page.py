"""The results page (experiments/results.md), regenerated from the experiment records kept in
``experiments/<study>/`` (:mod:`tools.records`; a record's kind comes from its file name):
``demo-<date>-<label>.json`` (a ``make demo`` results.json), ``bench-<device>-<date>-<label>.json``
(a ``make bench`` bench.json), ``finetune-<date>-<label>.json`` (a ``make finetune`` metrics.json
with its oracle learning curve), ``reward-<date>-<label>.json`` (a ``make reward`` metrics.json) and
``probe-<date>-<label>.json`` (a ``make probe-steps`` probe.json), ``loop-<date>-<label>.json``
(a ``make loop`` results.json), ``stages-<date>-<label>.json`` (``make bench ARGS="demo=true"``'s
demo.json: the demo's stage times, eager and compiled); each but bench's plus the
``command`` that made it and, optionally, the ``device`` it ran on (default: 2 CPU cores, whose
speed differs between machines).  Never typed by hand: ``make results-page``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from evaluation.curves import check_curve
from tools.bench import FLOP_CONVENTION
from tools.demo_bench import markdown as markdown_stages
from core.errors import UserError
from shapes.world import COUNT_WORDS, Prompt

MODELS = ("base", "rwl", "dpok", "dpok_oracle", "dpo", "kto")
METHOD_NAMES = {"base": "base model", "rwl": "RWL", "dpok": "DPOK", "dpok_oracle": "DPOK, oracle reward (upper bound)",
                "dpo": "Diffusion-DPO (the labels, no reward)", "kto": "Diffusion-KTO (the labels, no reward)"}


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def gain_summary(runs: list[tuple[str, dict]], what: str) -> str:
    """Each fine-tuned model's gain over base on the targets (points): mean of ``runs`` and each run,
    and the share of the oracle-reward DPOK gain the learned reward recovers (pooled over runs)."""
    gains: dict[str, list[float]] = {}
    for _, r in runs:
        for m in MODELS[1:]:
            if m in r:
                gains.setdefault(m, []).append(r[m]["targets"]["overall"] - r["base"]["targets"]["overall"])
    text = (f"Gain over base on the targets (points), {what}: "
            + ", ".join(f"{m} {100 * sum(g) / len(g):+.1f} ({', '.join(f'{100 * x:+.1f}' for x in g)})"
                        for m, g in gains.items()) + ".")
    both = [(label, r) for label, r in runs if "dpok_oracle" in r and "dpok" in r]
    o = sum(r["dpok_oracle"]["targets"]["overall"] - r["base"]["targets"]["overall"] for _, r in both)
    if both and o > 0:
        d = sum(r["dpok"]["targets"]["overall"] - r["base"]["targets"]["overall"] for _, r in both)
        text += (f" Learned-reward DPOK recovers {100 * d / o:.0f} % of the oracle-reward DPOK gain "
                 f"(runs {', '.join(label for label, _ in both)}).")
    return text


def _device(run: dict) -> str:
    """Where a results file's run ran: its ``device`` key, else the 2 CPU cores most runs had."""
    return run.get("device", "2 CPU cores")


def _base_model(run: dict) -> str:
    """The base model a demo results file fine-tuned: its ``base_model`` key, else shapes-sd (every
    demo before shapes-flow, issue 73)."""
    return run.get("base_model", "shapes-sd")


def demo_section(runs: list[tuple[str, dict]], current: list[str] = ()) -> list[str]:
    """One table row per model and run; the gains over base of the ``current`` runs (the shipped
    config, README's quote) apart from every other shapes-sd run's, and each other base model's
    runs apart (a flow model's gains are not the SD model's)."""
    lines = ["## `make demo`", "",
             "Oracle alignment (%) of fresh-seed samples (how many per prompt: the last table); targets = the prompts the rule picked "
             "from the raters' labels (both methods fine-tune on them); generalisation = held-out prompts never "
             "fine-tuned on; controls = train prompts with one or two objects, not targets. Reward: pairwise "
             "accuracy vs the oracle (zero-shot CLIP in brackets). Off-palette: the share of the objects in the "
             "targets' samples whose colour no palette name fits (the hacking alarm; n/a: a run from before the "
             "strict colour verdict).", "",
             "| run | model | targets overall | colour | count | combination | generalisation | controls | fidelity (CLIP-FD) | off-palette |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs:
        for m in MODELS:
            if m not in r:
                continue
            t = r[m]["targets"]
            lines.append(f"| {label} | {m} | {_pct(t['overall'])} | {_pct(t['color'])} | {_pct(t['count'])} | "
                         f"{_pct(t['combination'])} | {_pct(r[m]['generalization']['overall'])} | "
                         f"{_pct(r[m]['controls']['overall'])} | {_num(r[m]['fidelity'])} | "
                         f"{_pct(r[m].get('off_palette', {}).get('targets'))} |")
    now = [(label, r) for label, r in runs if label in current]
    other = [(label, r) for label, r in runs if label not in current and _base_model(r) == "shapes-sd"]
    elsewhere = sorted({_base_model(r) for _, r in runs} - {"shapes-sd"})
    summary = " ".join(([gain_summary(now, "the current config's runs (" + ", ".join(current) + "), mean (each)")] if now else [])
                       + ([gain_summary(other, "other runs, mean (each)")] if other else [])
                       + [gain_summary([(label, r) for label, r in runs if _base_model(r) == b],
                                       f"runs on {b}, mean (each)") for b in elsewhere])
    lines += ["", summary]
    if now:
        lines += ["", *gain_by_group(now)]
    curves = [(label, m, c) for label, r in runs for m, c in (r.get("curves") or {}).items() if c]
    if curves:
        lines += ["", "Oracle learning curves of DPOK (aligned % of the current policy's samples on the targets, "
                  "fixed seeds; round: value):", ""]
        lines += [f"- {label} {m}: " + ", ".join(f"{p['round']}: {_pct(p['oracle_aligned'])}" for p in c)
                  + f" ({check_curve(c).describe()})" for label, m, c in curves]
    lines += ["", "| run | targets | eval seeds per target (per control / held-out) prompt | reward val_images (zero-shot) | reward val_prompts (zero-shot) | seconds: total (generate, reward, RWL, DPOK, DPOK-oracle, evaluate) | device |",
              "|---|---|---|---|---|---|---|"]
    for label, r in runs:
        rm, sec = r.get("reward_model", {}), r.get("seconds", {})
        views = [f"{_num(rm.get(v, {}).get('pairwise_accuracy_vs_oracle'))} "
                 f"({_num(rm.get(v, {}).get('zero_shot_clip_pairwise_accuracy_vs_oracle'))})" for v in ("val_images", "val_prompts")]
        parts = ", ".join(str(round(sec.get(k, 0))) for k in ("generate", "reward", "finetune-rwl", "finetune-dpok",
                                                             "finetune-dpok-oracle", "evaluate"))
        k, k_side = eval_seeds(r)
        lines.append(f"| {label} | {len(r.get('targets_chosen') or [])} | {k} ({k_side}) | {views[0]} | {views[1]} | "
                     f"{round(sec.get('total', 0))} ({parts}) | {_device(r)} |")
    return lines


def gain_by_group(runs: list[tuple[str, dict]]) -> list[str]:
    """Where the gain goes: the base model's mean pass rate and each fine-tuned model's mean
    per-prompt gain over base (points; same prompts, same seeds) on the targets of ``runs``, by the
    prompt's object count and background.
    Prompts outside the shapes world's grammar are left out."""
    # (0, count, name) or (1, background, name) -> model -> per-prompt gains; sorts into column order
    groups: dict[tuple, dict[str, list[float]]] = {}
    for _, r in runs:
        for text, base in (r["base"].get("per_prompt") or {}).items():
            try:
                p = Prompt.parse(text)
            except UserError:
                continue
            keys = ((0, p.count, f"{COUNT_WORDS[p.count - 1]} object{'s' * (p.count > 1)}"),
                    (1, p.background or "", f"{p.background or 'any'} background"))
            for m in MODELS:
                v = (r.get(m, {}).get("per_prompt") or {}).get(text)
                if v is not None:
                    for g in keys:
                        groups.setdefault(g, {}).setdefault(m, []).append(v - (0 if m == "base" else base))
    if not groups:
        return []
    columns = sorted(groups)
    models = [m for m in MODELS if any(m in groups[c] for c in columns)]
    lines = ["Where the gain goes, over the same runs: by the target prompt's object count and background "
             "(`any`: none named), the base model's mean pass rate (%), then each model's mean gain over base "
             "per prompt (points; same prompts, same seeds), and how many (run, prompt) pairs.", "",
             "| model | " + " | ".join(c[2] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for m in models:
        cells = [(f"{100 * sum(groups[c][m]) / len(groups[c][m]):{'' if m == 'base' else '+'}.1f} "
                  f"({len(groups[c][m])})") if groups[c].get(m) else "-" for c in columns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def eval_seeds(r: dict) -> tuple[int, int]:
    """Fresh seeds per target prompt and per control / held-out prompt of a demo's evaluation.
    Results files from before ``eval_samples`` was recorded: the base's images over the targets,
    and 4 per side prompt (all of them used 4)."""
    e = r.get("eval_samples")
    if e is not None:
        return e["per_target_prompt"], e["per_side_prompt"]
    targets, n = r.get("targets_chosen") or [], r.get("base", {}).get("n_images")
    return (round(n / len(targets)) if n and targets else 4), 4


def bench_section(runs: list[tuple[str, list[dict]]]) -> list[str]:
    lines = ["## `make bench`", "", f"Update MFU counts FLOPs as follows: {FLOP_CONVENTION}.", "",
             "Compute: the run's `compute` settings (compiled UNet, UNet rows per update pass). Levers: seconds "
             "of the bare sampling forward / update forward+backward, eager → compiled (compile seconds), where "
             "the run timed them; older runs: the update forward+backward eager / channels_last / channels_last + "
             "torch.compile (compile seconds).", "",
             "| run | config | method | device | date | compute | overhead ratio | images/s | transitions/s | peak MB "
             "| update MFU | levers |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in runs:
        for b in rows:
            mfu = _pct(b.get("mfu_update")) + " %" if b.get("mfu_update") else "-"
            c = b.get("compute")
            compute = (f"compile {c['compile']}, micro-batch {c['micro_batch'] or 'none'}" if c else "-")
            lines.append(f"| {label} | {b['name']} | {b['method']} | {b.get('gpu') or b['device']} | "
                         f"{b.get('date') or '-'} | {compute} | {_num(b['overhead_ratio'])} | "
                         f"{_num(b['images_per_s'], 2)} | {_num(b['transitions_per_s'], 1)} | "
                         f"{b['peak_memory_mb']:.0f} | {mfu} | {_levers(b)} |")
    return lines


def _levers(b: dict) -> str:
    lv, old = b.get("levers"), b.get("levers_fwd_bwd_s")
    if lv and {"off", "on"} <= set(lv):
        off, on = lv["off"], lv["on"]
        return (f"{off['sample_fwd_2B']:.3f} → {on['sample_fwd_2B']:.3f} / {off['update_fwd_bwd_2u']:.3f} → "
                f"{on['update_fwd_bwd_2u']:.3f} ({on['compile_s']:.0f} s)")
    if lv:  # a run that compared other compile modes: seconds by mode as recorded
        return "; ".join(f"{k}: {t['sample_fwd_2B']:.3f} / {t['update_fwd_bwd_2u']:.3f}" for k, t in lv.items())
    if old:
        return (f"{old['eager']:.3f} / {old['channels_last']:.3f} / {old['channels_last+compile']:.3f} "
                f"({old['compile_seconds']:.0f} s)")
    return "-"


def finetune_section(runs: list[tuple[str, dict]]) -> list[str]:
    """One row per fine-tuning run: its oracle learning curve (aligned % on its training prompts,
    fixed seeds), the gain from the first point to the last and, where the file has an ``eval``
    key (``{"base": .., "model": .., "samples_per_prompt": k}``, from ``make eval``'s
    metrics.json), the fresh-seed figures of base and model.  A file's ``device`` key says where it
    ran (none: 2 CPU cores)."""
    lines = ["## `make finetune` runs with an oracle learning curve", "",
             "Steady: no later point of the curve more than one standard error (binomial, at its best point) "
             "below its best (evaluation.curves); n/a where the file does not say how many images a point has.", "",
             "| run | command | curve (round: aligned %) | curve gain (points) | largest later fall (one SE): steady | "
             "fresh seeds: base → model (gain) | seconds | device |",
             "|---|---|---|---|---|---|---|---|"]
    for label, m in runs:
        c = m.get("curve") or []
        gain = f"{100 * (c[-1]['oracle_aligned'] - c[0]['oracle_aligned']):+.1f}" if len(c) > 1 else "n/a"
        e = m.get("eval")
        fresh = (f"{_pct(e['base'])} → {_pct(e['model'])} ({100 * (e['model'] - e['base']):+.1f}), "
                 f"{e['samples_per_prompt']} per prompt" if e else "-")
        lines.append(f"| {label} | `{m.get('command', '')}` | "
                     + ", ".join(f"{p['round']}: {_pct(p['oracle_aligned'])}" for p in c)
                     + f" | {gain} | {_steadiness(c)} | {fresh} | {round(m.get('seconds', 0))} | {_device(m)} |")
    return lines


def _steadiness(curve: list[dict]) -> str:
    """The largest fall after the curve's best point in points, the best point's standard error in
    brackets, and whether it is steady (:func:`evaluation.curves.check_curve`)."""
    if len(curve) < 2:
        return "n/a"
    c = check_curve(curve)
    se = "n/a" if c.standard_error is None else f"{100 * c.standard_error:.1f}"
    verdict = {None: "n/a", True: "yes", False: "no"}[c.steady]
    return f"{100 * c.fall:.1f} ({se}): {verdict}"


def reward_section(runs: list[tuple[str, dict]]) -> list[str]:
    """One row per reward run (a ``make reward`` metrics.json with a ``command`` key): pairwise
    accuracy vs the oracle on both validation views, beside zero-shot CLIP's and, on
    ``val_images``, the oracle-labelled head's (the same head on noise-free labels), and split by
    pair kind (aligned vs misaligned image; two misaligned images)."""
    lines = ["## `make reward` runs (2 CPU cores)", "",
             "Pairwise accuracy vs the oracle. val_images: unseen images of the trained prompts (zero-shot CLIP; "
             "the same head trained on the oracle's labels), then on its pairs of an aligned and a misaligned "
             "image and on its pairs of two misaligned images (partial credit); val_prompts: unseen prompts (zero-shot CLIP).", "",
             "| run | command | val_images (zero-shot; oracle-labels head) | aligned pairs | failure pairs "
             "| val_prompts (zero-shot) | train seconds |",
             "|---|---|---|---|---|---|---|"]
    for label, m in runs:
        v, p = m.get("val_images", {}), m.get("val_prompts", {})
        lines.append(f"| {label} | `{m.get('command', '')}` | {_num(v.get('pairwise_accuracy_vs_oracle'))} "
                     f"({_num(v.get('zero_shot_clip_pairwise_accuracy_vs_oracle'))}; "
                     f"{_num(v.get('oracle_labels_head_pairwise_accuracy_vs_oracle'))}) | "
                     f"{_num(v.get('pairwise_accuracy_vs_oracle_aligned_pairs'))} | "
                     f"{_num(v.get('pairwise_accuracy_vs_oracle_failure_pairs'))} | "
                     f"{_num(p.get('pairwise_accuracy_vs_oracle'))} "
                     f"({_num(p.get('zero_shot_clip_pairwise_accuracy_vs_oracle'))}) | "
                     f"{round(m.get('train_seconds') or 0)} |")
    return lines


README_START, README_END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def probe_section(runs: list[tuple[str, dict]]) -> list[str]:
    """One row per ``make probe-steps`` run (a probe.json with a ``command`` key): the share of the
    reward's variance settled after each probed number of steps, and the deterministic tails
    against the stochastic one."""
    lines = ["## `make probe-steps` runs: which denoising steps decide the reward", "",
             "Settled share after k steps: the within-prompt correlation of the rewards of two independent "
             "continuations of the chain from its state after k steps (0: the starting noise says nothing, 1: the "
             "reward is fixed). Tails: from the state after `tail_from` steps, the within-prompt correlation with "
             "the chain's reward of the rest of the chain sampled afresh, and of deterministic tails (DDIM at eta 0, or "
             "the flow ODE) of n denoiser calls (mean reward in brackets).", "",
             "| run | command | chain | samples (mean reward) | settled share (k: share) | tails from k: stochastic; n: deterministic |",
             "|---|---|---|---|---|---|"]
    for label, m in runs:
        settled = ", ".join(f"{k}: {_num(v, 2)}" for k, v in m["settled"].items())
        tails = ("-" if m.get("tail_from") is None else f"{m['tail_from']}: {_num(m['stochastic_tail_corr'], 2)}; "
                 + ", ".join(f"{t['tail_steps']}: {_num(t['corr'], 2)} ({_num(t['mean_reward'])})" for t in m["tails"]))
        lines.append(f"| {label} | `{m.get('command', '')}` | {m.get('chain', '-')} | {m['samples']} ({_num(m['mean_reward'])}) "
                     f"| {settled} | {tails} |")
    return lines


def loop_section(runs: list[tuple[str, dict]]) -> list[str]:
    """The closed loop (``make loop``'s results.json): per run, a row per round and for the one-shot
    control and the oracle-reward upper bound; alignment on the round-0 targets with its paired
    gain over base and standard error (points)."""
    lines = ["## The closed loop (`make loop`)", "",
             "Oracle alignment (%) on the round-0 targets, gain over base ± its paired standard error; labels: rater "
             "answers spent so far; reward accuracy: pairwise accuracy vs the oracle on the round's new images, "
             "before and after retraining.", "",
             "| run | device | model | labels | round-0 targets | own targets | controls (gain) | held-out | "
             "fidelity vs base | reward acc. before / after |", "|---|---|---|---|---|---|---|---|---|---|"]

    def gain(r: dict, key: str = "round0") -> str:
        g, se = r.get(f"{key}_gain"), r.get(f"{key}_gain_se")
        return "n/a" if g is None else f"{_pct(r.get(f'{key}_targets'))} ({100 * g:+.1f} ± {_pct(se)})"

    for label, res in runs:
        base = res["base"]
        lines.append(f"| {label} | {_device(res)} | base | 0 | {_pct(base['round0_targets'])} | | "
                     f"{_pct(base['controls'])} | {_pct(base['generalization'])} | | |")
        for r in res["rounds"]:
            lines.append(f"| {label} | {_device(res)} | round {r['round']} | {r['labels_spent']} | {gain(r)} | "
                         f"{gain(r, 'own')} | {_pct(r['controls'])} ({100 * r['controls_gain']:+.1f}) | "
                         f"{_pct(r['generalization'])} | {100 * r['fidelity_vs_base']:+.1f} % | "
                         f"{_pct(r['reward_before'])} / {_pct(r['reward_after'])} |")
        for name, shown in (("one_shot", "one-shot control"), ("oracle", "oracle reward (upper bound)")):
            if name in res:
                o = res[name]
                lines.append(f"| {label} | {_device(res)} | {shown} | {o.get('labels_spent', '')} | {gain(o)} | | "
                             f"{_pct(o['controls'])} | | {100 * (o['fidelity'] / base['fidelity'] - 1):+.1f} % | |")
    return lines


def stages_section(runs: list[tuple[str, dict]]) -> list[str]:
    """``make demo`` stage by stage, eager against the compiled sampling path, one table per run
    (:func:`tools.demo_bench.markdown`, its title dropped)."""
    lines = ["## `make demo` stage by stage (`make bench ARGS=\"demo=true\"`)", ""]
    for label, res in runs:
        lines += [f"### {label} ({_device(res)})", "", *markdown_stages(res).splitlines()[2:], ""]
    return lines[:-1]


def run_seed(label: str) -> str:
    """The demo seed a run label ends with (``...-seed3`` -> ``3``), or ``?``."""
    m = re.search(r"seed(\d+)$", label)
    return m.group(1) if m else "?"


def readme_block(runs: list[tuple[str, dict]], folder: str) -> list[str]:
    """The README's quote of the demo, one row per method and run (by its seed and machine, not its
    run id): oracle alignment on the targets (gain over base) and on the control prompts."""
    lines = ["| method | demo seed | targets % (gain) | controls % | machine |", "|---|---|---|---|---|"]
    for m in MODELS:
        for label, r in runs:
            if m not in r:
                continue
            t, base = r[m]["targets"]["overall"], r["base"]["targets"]["overall"]
            gain = "" if m == "base" else f" ({100 * (t - base):+.1f})"
            lines.append(f"| {METHOD_NAMES[m]} | {run_seed(label)} | {_pct(t)}{gain} | {_pct(r[m]['controls']['overall'])} | "
                         f"{_device(r)} |")
    k, k_side = eval_seeds(runs[0][1])
    named = [(f"seed {run_seed(label)}", r) for label, r in runs]
    upper = " oracle_upper_bound=true" if any("dpok_oracle" in r for _, r in runs) else ""
    times = "; ".join(f"seed {run_seed(label)}: {_minutes(r.get('seconds', {}).get('total'))} on {_device(r)}"
                      for label, r in runs)
    return lines + ["", gain_summary(named, "mean (each run)"), "",
                    f"Oracle alignment (%) on the target prompts, {k} fresh seeds each, gain over base in "
                    f"brackets after it; controls ({k_side} seeds each). From `{folder}/` "
                    f"(`make demo ARGS=\"seed=N{upper}\"`); "
                    "more in [experiments/results.md](experiments/results.md).", "",
                    f"Time of its stages (the install not included): {times}."]


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def fill_readme(text: str, block: list[str]) -> str:
    """``text`` with the lines between the README's demo-results markers replaced by ``block``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise UserError(f"the README has no {README_START} ... {README_END} block to fill.",
                        "put the two marker lines back where the demo's figures belong.")
    return text[:start + len(README_START)] + "\n" + "\n".join(block) + "\n" + text[end:]


def readme_runs(folder: str | Path, runs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The demo runs the README quotes: those named in ``<folder>/readme.json`` ({"demo_runs":
    [label, ...]}), else none."""
    listing = Path(folder) / "readme.json"
    if not listing.is_file():
        return []
    wanted = json.loads(listing.read_text()).get("demo_runs", [])
    by_label = dict(runs)
    missing = [w for w in wanted if w not in by_label]
    if missing:
        raise UserError(f"{listing} names demo runs with no results file: {missing}.",
                        f"add demo-<label>.json for them to {folder}, or remove them from {listing}.")
    return [(w, by_label[w]) for w in wanted]


def results_page(folder: str | Path, runs: dict[str, list[tuple[str, dict]]], current: list[str]) -> str:
    """The page for the results files ``runs`` of ``folder`` (:func:`load_runs`); ``current``: the
    labels of the demo runs of the shipped config (:func:`readme_runs`)."""
    folder = Path(folder)
    demo, bench, finetune, reward = runs["demo"], runs["bench"], runs["finetune"], runs["reward"]
    lines = ["# Measured results", "",
             f"Generated by `make results-page` from the experiment records in `{folder.as_posix()}/` (one file "
             "per run, in the folder of its study; the run label holds its date). Commands: "
             "`make demo ARGS=\"seed=N oracle_upper_bound=true\"`, then copy `reports/demo/results.json` there; `make bench`, then copy `reports/bench/bench.json`; "
             "`make finetune ARGS=\"curve_every=N ...\"` or `make reward`, then its `metrics.json` with a `command` key; "
             "`make probe-steps`, then its `probe.json` with a `command` key.", ""]
    if demo:
        lines += demo_section(demo, current) + [""]
    if runs.get("loop"):
        lines += loop_section(runs["loop"]) + [""]
    if finetune:
        lines += finetune_section(finetune) + [""]
    if reward:
        lines += reward_section(reward) + [""]
    if runs.get("probe"):
        lines += probe_section(runs["probe"]) + [""]
    if bench:
        lines += bench_section(bench) + [""]
    if runs.get("stages"):
        lines += stages_section(runs["stages"]) + [""]
    return "\n".join(lines)
