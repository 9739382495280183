"""Evaluate the base model and fine-tuned models on the same prompts with the same seeds.

Any pipeline of a supported family (core.families: Stable Diffusion 1.x/2.x, SD3, FLUX; each
samples with its own sampler) and any prompts.  Per model: the learned reward (mean, and the
win-rate against the base: the share of (prompt, seed) pairs whose image the reward scores above
the base's image of the same pair, ties counting half), and a fidelity proxy: the Frechet distance
between CLIP image embeddings of the model's samples and of a reference set (FID's formula in CLIP
space; lower is closer), the reference being a folder of images when given, else renders of the
same prompts in the shapes world, else the base model's own samples.  When every prompt is a
shapes-world prompt it adds the oracle's alignment by category
(:func:`shapes.oracle.alignment_by_category`) on the prompts, on control prompts and on
unseen prompts.  Writes a Markdown table, metrics.json and, per model, a PNG grid of the same
seeds (:func:`evaluation.grids.sample_grid`, framed by the oracle's verdicts on shapes-world
prompts) with its prompts in a .txt beside it.

Seeds: image i of the evaluated list (targets, then controls, then unseen prompts) gets
:func:`core.seeds.eval_seeds` ``(seed, n)[i]``, the same for every model; the base model's card
(:mod:`evaluation.base_model`) seeds each split's list the same way, so its held-out figure is this
evaluation's base figure on ``split=heldout`` with the same ``samples_per_prompt``, ``seed`` and
sampling.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from core.config import to_dict
from core.errors import UserError
from core.families import folder_family
from core.files import write_text_atomic
from core.images import pil_to_tensor
from core.jsonable import json_safe
from core.loading import (ModelRef, default_device, load_clip, load_model, load_scheduler, pipeline_geometry,
                          resolve_model, with_scale, with_side_strength)
from core.sampling import generate_images, image_size, sampler_settings, sampling_dtype
from core.seeds import eval_seeds
from data.targets import read_prompts_file
from evaluation.config import EvalConfig
from evaluation.embeddings import clip_image_embeddings, frechet_distance, reference_embeddings
from evaluation.grids import keep_grid, sample_grid
from evaluation.frontier import (MEASURES, RIGHT_IMAGES_WANTED, FrontierPoint, FrontierReading, read_frontier,
                                 seeds_for_right_images, split_scale)
from evaluation.keep import KeepWhatIsRight, keep_what_is_right
from evaluation.oracle import (ALIGNMENT_KEYS, control_prompts, judged_figures, oracle_regions, pass_rates,
                               reference_renders, shapes_prompts, split_prompts)
from evaluation.settings import describe
from reward.reward_fn import load_reward


@dataclass
class SamplerKeep:
    """A fine-tuned model against the base on the target prompts at another DDIM eta than the
    evaluation's (EvalConfig.keep_etas), same seeds: the figures of the keep table."""

    eta: float
    gain: float  # alignment gain over the base (share) and its paired SE (image_paired_gain)
    gain_se: float
    keep: KeepWhatIsRight
    frontier: dict[str, FrontierReading] = field(default_factory=dict)  # by measure; {}: no frontier


@dataclass
class ModelEval:
    name: str
    alignment: dict[str, float]  # oracle, on the evaluated (target) prompts; {} unless shapes-world prompts
    controls: dict[str, float]
    reward: float  # mean over the evaluated prompts' images
    fidelity: float  # CLIP-FD to the reference (EvalReport.fidelity_reference)
    n_images: int
    generalization: dict[str, float] = field(default_factory=dict)  # unseen prompts (NaN if none)
    per_prompt: dict[str, float] = field(default_factory=dict)  # evaluated prompt -> share of samples aligned
    reward_win_rate: float | None = None  # against the base on the same seeds (win_rate); None for the base
    # share of the objects the oracle found whose colour is off palette, per prompt set ("targets",
    # "controls", "generalization"; NaN where none); {} unless shapes-world prompts
    off_palette: dict[str, float] = field(default_factory=dict)
    # the oracle's verdict on each evaluated (target) image, in the evaluated order (prompt by
    # prompt, the same seeds for every model): what the paired gain's standard error is taken from
    # (image_paired_gain); [] unless shapes-world prompts
    aligned: list[bool] = field(default_factory=list)
    # the overall alignment gain over the base on the targets and its standard error
    # (image_paired_gain); None for the base and without the oracle
    gain: float | None = None
    gain_se: float | None = None
    # against the base at the same seeds, on the targets: base-wrong images fixed, base-right images
    # broken, pixels moved (evaluation.keep); None for the base and without the oracle
    keep: KeepWhatIsRight | None = None
    # the scheduler class that sampled this model's images (core.sampling.SamplingConfig.settings)
    sampler: str = ""
    scale: float = 1.0  # what fine-tuning learned, scaled at load (core.loading.with_scale); 1: as trained
    frontier_point: bool = False  # one of the frontier's points (the frontier run at one of its scales)
    # the keep figures read against the frontier and the floor (evaluation.frontier), by measure
    # (MEASURES); {} for the base, without the oracle or without a frontier
    frontier: dict[str, FrontierReading] = field(default_factory=dict)
    # the keep table at each further eta (EvalConfig.keep_etas), same seeds; [] for the base
    samplers: list[SamplerKeep] = field(default_factory=list)


PROMPT_SETS = {"targets": "target", "controls": "control", "generalization": "held-out"}  # ModelEval.off_palette keys
OFF_PALETTE_TOLERANCE = 0.02  # a rise in the off-palette share under 2 points is noise at these sample sizes


def off_palette_alarms(results: list[ModelEval]) -> list[str]:
    """The hacking alarm: a sentence for every fine-tuned model and prompt set whose share of
    off-palette objects rose more than OFF_PALETTE_TOLERANCE over the base's (the first result)."""
    if not results or not results[0].off_palette:
        return []
    base, out = results[0], []
    for r in results[1:]:
        for where, share in r.off_palette.items():
            rise = share - base.off_palette.get(where, float("nan"))
            if rise > OFF_PALETTE_TOLERANCE:  # False for NaN
                out.append(f"{r.name}: {100 * share:.1f} % of the objects in its samples of the {PROMPT_SETS[where]} prompts are "
                           f"off palette, against {100 * base.off_palette[where]:.1f} % for the base "
                           f"({100 * rise:+.1f} points): the model drifts to colours no palette name fits"
                           + (", where the reward pushed it: a reward-hacking sign." if where == "targets"
                              else ", on prompts it was not fine-tuned on: collateral drift."))
    return out


def image_paired_gain(model: list[bool], base: list[bool], texts: list[str]) -> tuple[float, float]:
    """Mean and standard error of a model's gain over the base in the share of aligned images, from
    the paired differences of images of the same prompt and seed (``model``, ``base`` and their
    ``texts``, (N,) each).  The evaluated prompts are fixed (the targets themselves, not a draw of
    prompts), so the randomness is the seeds': the variance of the mean is stratified by prompt,
    sum_p s_p^2 / k_p over P^2, s_p^2 the prompt's sample variance of its k_p differences.  NaN
    standard error when some prompt has fewer than 2 images."""
    d = np.asarray(model, dtype=float) - np.asarray(base, dtype=float)
    if len(d) == 0 or len(d) != len(texts):
        return math.nan, math.nan
    groups: dict[str, list[float]] = {}
    for t, x in zip(texts, d):
        groups.setdefault(t, []).append(x)
    means = [np.mean(g) for g in groups.values()]
    if min(len(g) for g in groups.values()) < 2:
        return float(np.mean(means)), math.nan
    var = sum(np.var(g, ddof=1) / len(g) for g in groups.values()) / len(groups) ** 2
    return float(np.mean(means)), float(math.sqrt(var))


def win_rate(rewards: np.ndarray, base_rewards: np.ndarray) -> float:
    """Share of paired images (same prompt and seed, (N,) each) where ``rewards`` beats the base's,
    a tie counting half: 0.5 means no better than the base."""
    return float(np.mean((rewards > base_rewards) + 0.5 * (rewards == base_rewards)))


def _models(cfg: EvalConfig, base: ModelRef) -> tuple[list[tuple[str, ModelRef]], list[str]]:
    """The named runs, each checked to be there, to hold a fine-tuned model and to have been
    trained from the base's pipeline (core.loading.resolve_model), at the scale a ``@scale``
    suffix gives; then the frontier model at each of ``frontier_scales`` not named already.  And
    the names of the frontier's points (the frontier run at each of its scales; [] without a
    frontier: fewer than two scales of it)."""
    out: list[tuple[str, ModelRef]] = []
    unscaled: dict[str, ModelRef] = {}
    for item in cfg.models:
        name, _, path = item.partition("=")
        name = name.strip()
        if not path or not name:
            raise UserError(f"model '{item}' is not name=path.", "write e.g. models=[dpok=runs/finetune-dpok].")
        if name == "base" or name in dict(out):
            raise UserError(f"model name '{name}' is used twice (the base model is 'base').",
                            "give each run its own name, e.g. models=[a=runs/x, b=runs/y].")
        path, scale = split_scale(path, name)
        if not Path(path).exists():
            raise UserError(f"model {name}: the run folder {path} does not exist.",
                            "fix the path, or leave that run out of models=[...].")
        ref = resolve_model(path, base=base.base)
        if cfg.side_strength is not None and ref.side is not None:
            ref = with_side_strength(ref, cfg.side_strength)
        unscaled[name] = ref
        out.append((name, ref if scale is None else with_scale(ref, scale)))
    if cfg.side_strength is not None and not any(ref.side for _, ref in out):
        raise UserError(f"side_strength={cfg.side_strength} was given, and none of the models is a side-network run.",
                        "leave side_strength out, or add a run of make finetune with model.parameterisation=side.")
    front = cfg.frontier if cfg.frontier is not None else ("dpok" if "dpok" in unscaled else None)
    if front is None and cfg.frontier_scales:
        raise UserError(f"frontier_scales={list(cfg.frontier_scales)} was given, and no model is the frontier "
                        "(none is named dpok).", "name the plain run the frontier: frontier=<one of the models' names>.")
    if front is None:
        return out, []
    if front not in unscaled:
        raise UserError(f"frontier={front} names no model (models: {', '.join(unscaled) or 'none'}).",
                        "set frontier to one of the models' names.")
    plain = unscaled[front]
    same = [n for n, r in out if r.run is not None and plain.run is not None and r.run.resolve() == plain.run.resolve()
            and r.side_strength == plain.side_strength]
    have = {r.scale for n, r in out if n in same}
    for s in sorted(set(cfg.frontier_scales) - have):
        name = f"{front}@{s:g}"
        if name in dict(out):
            raise UserError(f"model name '{name}' is used twice (frontier_scales adds it).",
                            "name your own models otherwise, or leave that scale out of frontier_scales.")
        out.append((name, with_scale(plain, s)))
        same.append(name)
    scales = {r.scale for n, r in out if n in same}
    if len(scales) < 2:
        if cfg.frontier is not None or cfg.frontier_scales:
            raise UserError(f"the frontier model {front} is evaluated at {len(scales)} scale, and a frontier needs two "
                            "at least.", "add frontier_scales=[0.1,0.25,0.5] (the smallest is the floor).")
        return out, []
    return out, same


def evaluated_prompts(cfg: EvalConfig) -> list[str]:
    """The target prompts: ``prompts_file`` (any prompts, one per line) or the shapes-world ``split``."""
    if not cfg.prompts_file:
        return split_prompts(cfg.split)  # raises on an unknown split
    return read_prompts_file(cfg.prompts_file)


def evaluate(cfg: EvalConfig, progress=None, sampling_note: str | None = None) -> list[ModelEval]:
    """Sample the base and every named run on the same prompts and seeds, score and compare them,
    and write ``cfg.output_dir`` (see the module docstring).  Every input is checked before any
    sampling: a run, reward, CLIP or reference folder that is not there is one clear error."""
    base = resolve_model(cfg.base)  # a pipeline folder or a fine-tuned run
    image_size(cfg.sampling.height, cfg.sampling.width, *pipeline_geometry(base.base))
    main_texts = evaluated_prompts(cfg)
    prompts = shapes_prompts(main_texts)  # None: not all shapes-world prompts, no oracle
    if prompts is not None:
        main_texts = [p.text for p in prompts]  # the canonical spelling the oracle and renderer parse
    if prompts is None and (cfg.generalization_split or cfg.reward.kind == "oracle"):
        raise UserError("generalization_split and reward.kind=oracle need shapes-world prompts (the oracle "
                        "judges them); some evaluated prompts are not.",
                        "leave generalization_split out and use a learned reward (reward.path=<RewardModel folder>).")
    chosen = set(main_texts)
    unseen = [t for t in split_prompts(cfg.generalization_split) if t not in chosen] if cfg.generalization_split else []
    controls = control_prompts(chosen) if cfg.control_split and prompts is not None else []
    k = cfg.samples_per_prompt
    k_side = k if cfg.side_samples_per_prompt is None else cfg.side_samples_per_prompt
    models, frontier = _models(cfg, base)
    names = [("base", base)] + models
    etas = [e for e in dict.fromkeys(cfg.keep_etas) if e != cfg.sampling.eta]  # the keep table's further samplers
    if etas and (prompts is None or base.family.flow):
        raise UserError(f"keep_etas={list(cfg.keep_etas)} was given, and "
                        + ("the keep table needs shapes-world prompts (the oracle judges them)." if prompts is None
                           else f"{base.family.title} samples its flow ODE (deterministic already), no DDIM eta."),
                        "leave keep_etas out.")
    dtype = sampling_dtype(cfg.mixed_precision, default_device())  # the pipelines' device (load_model)
    # A reward folder that is not there is an error.  The evaluation reports the reward itself:
    # reward.optimism (a fine-tuning bonus for what the reward is unsure of) never counts here.
    reward = load_reward(replace(cfg.reward, optimism=0.0), device=None)
    clip = load_clip(cfg.clip)
    n_main = len(main_texts) * k
    if n_main < 2:
        raise UserError(f"{n_main} sample per model: the fidelity proxy (a Frechet distance) needs at least 2.",
                        "raise samples_per_prompt, or evaluate more prompts.")
    reference = reference_embeddings(clip, cfg.reference_images) if cfg.reference_images else None
    texts = [t for t in main_texts for _ in range(k)] + [t for t in [p.text for p in controls] + unseen for _ in range(k_side)]
    seeds = eval_seeds(cfg.seed, len(texts))  # the same seeds for every model
    n_ctrl = len(controls) * k_side
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, base_rewards, base_aligned, base_images, base_regions = [], None, None, None, None
    base_at: dict[float, tuple[list[bool], list, list]] = {}  # eta -> the base's verdicts, images, regions
    shown: list[int] = []  # the keep grid's rows: indexes into the targets' images
    cells: list[list] = []  # per shown row: (image, aligned) of the base, then of each model
    for name, ref in names:
        pipe = load_model(ref)
        images = generate_images(pipe, texts, seeds, cfg.sampling, progress=progress, dtype=dtype)
        tensor = pil_to_tensor(images[:n_main])
        scores = reward.score(tensor, texts[:n_main])
        rewards = scores.float().cpu().numpy()
        embeddings = clip_image_embeddings(clip, tensor)
        if reference is None:  # renders of the same prompts (shapes world), else the base's samples
            reference = embeddings if prompts is None else clip_image_embeddings(clip, pil_to_tensor(
                reference_renders(texts[:n_main], seeds[:n_main], images[0].size[0])))
        align, ctrl, gen, per_prompt, off, verdicts = {}, {}, {}, {}, {}, None
        if prompts is not None:  # a side list left empty has all-NaN figures
            parts = {"targets": slice(0, n_main), "controls": slice(n_main, n_main + n_ctrl),
                     "generalization": slice(n_main + n_ctrl, None)}
            figs, off, verdicts = judged_figures(images, texts, parts)
            align, ctrl, gen = (figs[where] for where in parts)
            per_prompt = pass_rates(texts[:n_main], verdicts[:n_main])
        aligned = [] if verdicts is None else [bool(v.aligned) for v in verdicts[:n_main]]
        gain, gain_se, keep = None, None, None
        if base_aligned is not None and aligned:
            gain, gain_se = image_paired_gain(aligned, base_aligned, texts[:n_main])
            if base_regions is None:  # the oracle's regions of the base images, once
                base_regions = oracle_regions(base_images, texts[:n_main])
                shown = keep_rows(base_aligned, [m for m, _ in base_regions], texts[:n_main], cfg.grid_prompts)
                cells = [[(base_images[i], base_aligned[i])] for i in shown]
            keep = keep_what_is_right(base_aligned, aligned, base_images, images[:n_main], base_regions)
            for row, i in zip(cells, shown):
                row.append((images[i], aligned[i]))
        samplers = []
        for eta in etas:  # the targets again at each further eta, same seeds (the keep table only)
            at = generate_images(pipe, texts[:n_main], seeds[:n_main], replace(cfg.sampling, eta=eta),
                                 progress=progress, dtype=dtype)
            ok = [bool(v.aligned) for v in judged_figures(at, texts[:n_main], {})[2]]
            if eta not in base_at:
                base_at[eta] = (ok, at, oracle_regions(at, texts[:n_main]))
                continue
            b_ok, b_images, b_regions = base_at[eta]
            samplers.append(SamplerKeep(eta, *image_paired_gain(ok, b_ok, texts[:n_main]),
                                        keep_what_is_right(b_ok, ok, b_images, at, b_regions)))
        results.append(ModelEval(name, align, ctrl, float(scores.mean()), frechet_distance(embeddings, reference),
                                 n_main, gen, per_prompt, None if base_rewards is None else win_rate(rewards, base_rewards),
                                 off, aligned, gain, gain_se, keep,
                                 sampler_settings(cfg.sampling, pipe.scheduler, ref.family).sampler, ref.scale,
                                 samplers=samplers))
        if base_rewards is None:
            base_rewards, base_aligned, base_images = rewards, aligned, images[:n_main]
        _save_grid(images[:n_main], texts[:n_main], None if verdicts is None else verdicts[:n_main], cfg,
                   out / f"samples-{name}.png")
        del pipe
    if cells:  # base | each model, one seed a row, the base's problem region tinted
        keep_grid([[im for im, _ in row] for row in cells], [texts[i] for i in shown],
                  [[ok for _, ok in row] for row in cells], [base_regions[i][0] for i in shown]).save(out / "keep.png")
        (out / "keep.txt").write_text("base | " + " | ".join(n for n, _ in names[1:]) + "\n"
                                      + "\n".join(texts[i] for i in shown) + "\n")
    read_frontiers(results, frontier)
    write_report(results, cfg, out, oracle=prompts is not None, sampling_note=sampling_note, frontier=frontier)
    return results


def read_frontiers(results: list[ModelEval], frontier: list[str]) -> None:
    """Each fine-tuned model's keep figures read against the frontier (the models named
    ``frontier``: one run at several scales) and its floor, at the evaluation's sampler and at
    each further one (evaluation.frontier); sets ``frontier`` of every ModelEval and SamplerKeep."""
    points = [r for r in results if r.name in frontier and r.keep is not None]
    if len(points) < 2:
        return
    for r in points:
        r.frontier_point = True

    def figures(r: ModelEval, j: int | None) -> tuple[float, KeepWhatIsRight] | None:
        if j is None:
            return (r.gain, r.keep) if r.keep is not None else None
        return (r.samplers[j].gain, r.samplers[j].keep) if j < len(r.samplers) else None

    for j in [None, *range(len(points[0].samplers))]:
        for measure in MEASURES:
            line = [FrontierPoint(p.scale, g, getattr(k, measure), k.n_base_right)
                    for p in points if (fig := figures(p, j)) is not None for g, k in [fig]]
            for r in results:
                if (fig := figures(r, j)) is None:
                    continue
                gain, k = fig
                reading = read_frontier(line, gain, getattr(k, measure), k.n_base_right, measure)
                (r.frontier if j is None else r.samplers[j].frontier)[measure] = reading


def keep_rows(base_aligned: list[bool], masks: list, texts: list[str], n: int) -> list[int]:
    """Up to ``n`` target images for the keep grid: base-right ones and base-wrong ones with a region
    to tint, half each where there are enough, each prompt's first before any prompt's second."""
    def spread(idx: list[int]) -> list[int]:  # one image a prompt first, in order, then the rest
        firsts = list({texts[i]: i for i in reversed(idx)}.values())[::-1]
        first = set(firsts)
        return firsts + [i for i in idx if i not in first]

    right = spread([i for i, ok in enumerate(base_aligned) if ok])
    wrong = spread([i for i, (ok, m) in enumerate(zip(base_aligned, masks)) if not ok and m.any()])
    half = min(len(right), max(n // 2, n - len(wrong)))
    return sorted(right[:half] + wrong[:n - half])


def _save_grid(images, texts, verdicts, cfg: EvalConfig, path: Path) -> None:
    """The first ``grid_prompts`` evaluated (target) prompts, one row each, their first
    ``grid_samples`` seeds across (``images`` / ``texts`` / ``verdicts``: the targets' images,
    ``samples_per_prompt`` consecutive seeds per prompt; ``verdicts`` None: not judged, no frames);
    the rows' prompts in a .txt beside it."""
    k = cfg.samples_per_prompt
    cols = min(k, cfg.grid_samples)
    n = min(cfg.grid_prompts, len(images) // k)
    cells = [[p * k + j for j in range(cols)] for p in range(n)]
    sample_grid([[images[i] for i in row] for row in cells], [texts[p * k] for p in range(n)],
                None if verdicts is None else [[verdicts[i].aligned for i in row] for row in cells]).save(path)
    (path.with_suffix(".txt")).write_text("\n".join(texts[p * k] for p in range(n)) + "\n")


def fidelity_reference(cfg: EvalConfig, oracle: bool) -> str:
    return (f"the images in {cfg.reference_images}" if cfg.reference_images
            else "renders of the same prompts" if oracle else "the base model's samples")


# Said in results.md and metrics.json of an evaluation on prompts that are not all shapes-world ones.
SHAPES_ONLY = ("alignment, controls, generalization, per_prompt, off_palette, aligned and keep are the "
               "shapes-world oracle's figures: empty on these prompts (the reward and fidelity columns are the figures).")


def markdown_table(results: list[ModelEval]) -> str:
    """One row per model; the oracle's alignment columns only when the results have them."""
    oracle = bool(results and results[0].alignment)
    cols = [*ALIGNMENT_KEYS, "generalization overall", "controls overall", "off-palette objects (targets)",
            "base-wrong fixed", "base-right broken", "base-right broken (changed)", "base-right unchanged",
            "pixels moved (base-right)"] if oracle else []
    head = "| model | " + " | ".join(cols + ["mean reward", "reward win-rate vs base",
                                             "fidelity (CLIP-FD, lower is better)"]) + " |"
    rows = [head, "|" + "---|" * (len(cols) + 4)]
    for r in results:
        cells = ([f"{r.alignment[k]:.3f}" for k in ALIGNMENT_KEYS]
                 + [f"{r.generalization.get('overall', float('nan')):.3f}", f"{r.controls['overall']:.3f}",
                    f"{r.off_palette.get('targets', float('nan')):.3f}"] + _keep_cells(r.keep)
                 if oracle else [])
        win = "-" if r.reward_win_rate is None else f"{r.reward_win_rate:.3f}"
        rows.append(f"| {r.name} | " + " | ".join(cells + [f"{r.reward:.3f}", win, _fixed(r.fidelity, 4)]) + " |")
    return "\n".join(rows)


def _fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, a value that rounds to zero as 0.000… (not -0.000…: the base's
    fidelity to its own samples comes out a hair below zero)."""
    text = f"{x:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def _pct(x: float, se: float | None = None, sign: bool = False) -> str:
    """A share as percent with one decimal (``sign``: signed), "± SE" after it when given; n/a for NaN."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}") + ("" if se is None else " ± " + ("n/a" if not math.isfinite(se) else f"{100 * se:.1f}"))


MEASURE_TITLES = {"broken": "every verdict flip counts",
                  "broken_changed": "broken only where at least 2 % of the image's pixels moved"}


# under a keep table that was not read against a frontier (no frontier_scales)
NO_FRONTIER = ("Not read against a frontier: any LoRA run breaks less when turned down at load, so a broken share "
               "alone does not say a method keeps what is right. Evaluate the plain run at smaller scales too "
               "(make eval frontier_scales=[0.1,0.25,0.5]; make demo "
               "ARGS=\"eval_args=[frontier_scales=[0.1,0.25,0.5]]\") to read each model against it at equal gain "
               "and against the floor.")


def frontier_table(results: list[ModelEval], main_sampler: str = "the evaluation's") -> list[str]:
    """Markdown lines: per measure (evaluation.frontier.MEASURES) a table of every fine-tuned model at
    every sampler against the frontier at its gain and the floor; [] without a frontier."""
    rows = [(main_sampler, r, r.gain, r.gain_se, r.keep, r.frontier) for r in results if r.frontier]
    rows += [(f"η = {sk.eta:g}", r, sk.gain, sk.gain_se, sk.keep, sk.frontier)
             for r in results for sk in r.samplers if sk.frontier]
    if not rows:
        return []
    order = list(dict.fromkeys(label for label, *_ in rows))
    rows.sort(key=lambda row: order.index(row[0]))  # sampler by sampler, models in evaluation order
    floor = rows[0][5]["broken"]
    points = ", ".join(f"{r.name} (scale {r.scale:g})" for r in sorted((r for r in results if r.frontier_point),
                                                                        key=lambda r: r.scale))
    out = [f"Frontier and floor: each model's broken share read against the frontier run, {points}, scaled to the "
           f"same gain (linear between its two scaled points around that gain; ± SE, binomial, the interpolated "
           f"frontier's the weighted sum of its points' SEs) and against the floor, what the frontier run at scale "
           f"{floor.floor_scale:g} breaks. Target test: (broken − floor) ≤ ½ (frontier − floor), i.e. margin "
           f"½ (frontier + floor) − broken ≥ 0; gain share: the gain over the frontier run's at scale 1. Base-right "
           f"images unchanged: fewer than 2 % of their pixels moved."]
    for measure in MEASURES:
        out += ["", f"*{measure}*: {MEASURE_TITLES[measure]}.", "",
                "| sampler | model | scale | gain (points) | broken % (of base-right) | frontier at equal gain % "
                "(between scales) | floor % | margin (points) | test | gain share | base-right unchanged % |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, r, gain, gain_se, k, readings in rows:
            f = readings[measure]
            between = ("" if f.between is None else " (floor)" if f.between[0] == f.between[1]
                       else f" ({f.between[0]:g}–{f.between[1]:g})")
            test = ("frontier point" if r.frontier_point else "n/a (gain beyond the frontier)" if f.between is None
                    else "n/a" if f.passes is None else "pass" if f.passes else "fail")
            out.append(f"| {label} | {r.name} | {r.scale:g} | {_pct(gain, gain_se, sign=True)} | {_pct(f.rate, f.rate_se)} of "
                       f"{k.n_base_right} | {_pct(f.frontier, f.frontier_se)}{between} | {_pct(f.floor, f.floor_se)} | "
                       f"{_pct(f.margin, f.margin_se, sign=True)} | {test} | {_pct(f.gain_share)} % | {_pct(k.unchanged)} |")
    return out


def right_images_note(results: list[ModelEval], samples_per_prompt: int) -> str:
    """A sentence on how many right target images the base drew, and the seeds per target prompt
    that would give RIGHT_IMAGES_WANTED when it drew fewer; "" without keep figures."""
    k = next((r.keep for r in results if r.keep is not None), None)
    if k is None:
        return ""
    said = f"The base drew {k.n_base_right} right target images"
    if k.n_base_right >= RIGHT_IMAGES_WANTED:
        return said + f" (at least {RIGHT_IMAGES_WANTED}: the broken shares' SEs are about 3 points or less)."
    want = seeds_for_right_images(k.n_base_right, samples_per_prompt)
    return said + (f", fewer than {RIGHT_IMAGES_WANTED}: the broken shares' SEs are wide; samples_per_prompt={want} "
                   f"would give about {RIGHT_IMAGES_WANTED}." if want else ": no broken share can be measured.")


def _keep_cells(k: KeepWhatIsRight | None) -> list[str]:
    if k is None:
        return ["-"] * 5
    return [f"{k.fixed:.3f} of {k.n_base_wrong}", f"{k.broken:.3f} of {k.n_base_right}", f"{k.broken_changed:.3f}",
            f"{k.unchanged:.3f}", f"{k.moved_base_right:.3f}"]


def write_report(results: list[ModelEval], cfg: EvalConfig, out: Path, oracle: bool = True,
                 sampling_note: str | None = None, frontier: list[str] = ()) -> None:
    """``sampling_note``: the setting every model sampled at and where it came from
    (:func:`evaluation.settings.eval_setting`); None: ``cfg.sampling``, as configured."""
    base = resolve_model(cfg.base).base
    note = sampling_note or describe(cfg.sampling, "as configured", load_scheduler(base), folder_family(base))
    samplers = {r.sampler for r in results}
    if len(samplers) > 1:  # under sampling.scheduler=pipeline, a full-pipeline run may ship another scheduler
        note += "; samplers by model: " + ", ".join(f"{r.name} {r.sampler}" for r in results)
    table = markdown_table(results)
    side = (f"; {cfg.side_samples_per_prompt} per control and generalisation prompt"
            if oracle and cfg.side_samples_per_prompt is not None else "")
    about = ("Alignment: oracle verdicts by category; controls: train prompts with one or two objects. "
             "Off-palette objects: the share of the objects found whose colour no palette name fits. "
             "Against the base at the same seeds (target prompts): the share of the images the base drew "
             "wrong that the model draws right (fixed), of those it drew right that the model draws wrong "
             "(broken; *changed*: only those with at least 2 % of their pixels moved, the rest *unchanged*), "
             "and the mean share of pixels moved on the base-right images (a pixel moved: a channel changed by "
             "more than 40 of 255).\n\n" if oracle
             else f"No oracle columns: not every prompt is a shapes-world prompt. {SHAPES_ONLY}\n\n")
    alarms = "".join(f"\n- **{a}**" for a in off_palette_alarms(results))
    eta = "the flow ODE" if folder_family(base).flow else f"η = {cfg.sampling.eta:g}"
    front = frontier_table(results, eta)
    enough = right_images_note(results, cfg.samples_per_prompt)
    tuned = oracle and any(r.keep is not None for r in results)
    keep_md = ("\n## Keep what is right: the frontier and the floor\n\n" + "\n".join(front) + "\n"
               if front else (f"\n{NO_FRONTIER}\n" if tuned else "")) + (f"\n{enough}\n" if enough else "")
    write_text_atomic(out / "results.md",
        f"# Evaluation on {cfg.prompts_file or cfg.split} prompts, {cfg.samples_per_prompt} samples per prompt "
        f"(seed {cfg.seed}){side}\n\nSampling, the same for every model: {note}.\n\n{about}"
        f"Reward win-rate: the share of (prompt, seed) pairs whose image the reward scores above the base's "
        f"(ties count half). Fidelity: CLIP-space Frechet distance to {fidelity_reference(cfg, oracle)}.\n\n"
        f"{table}\n" + (f"\nHacking alarm:{alarms}\n" if alarms else "") + keep_md)
    write_text_atomic(out / "metrics.json", json.dumps(json_safe(
        {"config": to_dict(cfg), "sampling": note, "oracle": oracle, "fidelity_reference": fidelity_reference(cfg, oracle),
         **({} if oracle else {"note": SHAPES_ONLY}), "frontier": list(frontier),
         "models": {r.name: asdict(r) for r in results}}), indent=2))
