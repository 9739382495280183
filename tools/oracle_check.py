"""``make oracle-check``: how far the shapes-world oracle can be trusted as a judge.

Renders ``n_images`` prompts (cycling through every prompt of the grammar) and measures:

- ``render_accuracy``: the oracle says "aligned" for a render and its own prompt, over clean renders
  and the same renders with blur and noise like a generated image's (target >= 0.99);
- ``noise_aligned_rate``: uniform-noise images judged aligned with a prompt (target <= 0.05);
- ``mismatch_aligned_rate``: degraded renders judged aligned with a prompt that differs in one
  specified attribute, so the image truly does not match (target <= 0.05).

Then the colour verdict (shapes.hue_sweep): renders of every prompt that names a colour, judged
against that prompt; "accepted" means the colour verdict holds (``Verdict.color``; count and shape
are measured above, and the VAE's round trip blurs some shapes: a shape judgement, not a colour one),

- ``correct_accept``: drawn in the palette colour, clean, blurred with noise, and round-tripped
  through the pipeline's VAE (``vae``; a sample of its latent distribution): each accepted >= 0.99;
- the hue sweep: recoloured every ``hue_step`` degrees of CIELAB hue towards each hue neighbour,
  blurred with noise; ``other_name_accept_rate``, over the steps a person names by another colour
  (not borderline), <= 0.02.  The accept rate of every step is printed as a table;
- ``agreement``: on ``agreement_samples_per_prompt`` samples per prompt of the base model
  (``base``), the share of images where this oracle and the previous one (colour by per-pixel RGB
  snapping, kept here only for this figure: :func:`rgb_snapping_aligned`) give the same verdict
  (target >= 0.95; 0 samples: not measured).

The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import seeds
from core.errors import UserError
from core.loading import check_folder
from shapes import SHAPES_SD
from shapes.hue_sweep import SweepStep, VaeRoundTrip, sweep_steps
from shapes.oracle import Verdict, judge
from shapes.render import degrade, draw_scene, render, sample_scene
from shapes.world import ATTRIBUTES, COLORS, Prompt, all_prompts, perturb

CORRECT_VARIANTS = ("clean", "blurred", "vae")
CORRECT_MIN, OTHER_NAME_MAX, AGREEMENT_MIN = 0.99, 0.02, 0.95


@dataclass(frozen=True)
class OracleCheckConfig:
    n_images: int = 600
    size: int = 64
    seed: int = 0
    blur_sigma: tuple[float, float] = (0.5, 1.2)  # px at 64x64, drawn uniformly per image
    noise_sigma: tuple[float, float] = (5.0, 15.0)  # 0-255 units, drawn uniformly per image
    hue_step: float = 5.0  # degrees of CIELAB hue between sweep steps
    sweep_per_step: int = 40  # renders per hue step
    correct_per_variant: int = 200  # renders per palette colour and variant (clean, blurred, vae)
    vae: str = str(SHAPES_SD)  # pipeline folder whose VAE round-trips the "vae" variant
    base: str = str(SHAPES_SD)  # pipeline sampled for the agreement with the previous oracle
    agreement_samples_per_prompt: int = 4  # per prompt of the grammar; 0: agreement not measured


@dataclass(frozen=True)
class SweepRow:
    step: SweepStep
    n: int
    accepted: float  # share whose colour verdict holds for the palette colour's prompt


@dataclass(frozen=True)
class Agreement:
    n_images: int
    agree: float  # same aligned verdict, new oracle and previous
    only_previous_accepts: float  # share of images the previous oracle accepted and this one rejects
    only_new_accepts: float


@dataclass(frozen=True)
class OracleCheckResult:
    n_images: int
    render_accuracy: float
    clean_accuracy: float
    degraded_accuracy: float
    noise_aligned_rate: float
    mismatch_aligned_rate: float
    mismatch_aligned_by_attribute: dict[str, float]
    correct_accept: dict[str, float]  # variant -> accept rate over all palette colours
    correct_accept_by_color: dict[str, dict[str, float]]  # colour -> variant -> accept rate
    other_name_accept_rate: float  # pooled over the sweep steps a person names differently
    same_name_accept_rate: float  # pooled over the shifted steps a person still names alike
    agreement: Agreement | None
    ms_per_image: float
    targets_met: bool


def rgb_snapping_aligned(v: Verdict, prompt: Prompt) -> bool:
    """The previous oracle's verdict: colour from the palette colour a blob's pixels snapped to by
    RGB distance (``Blob.nearest``), everything else as now."""
    color_ok = prompt.color is None or (v.n_objects > 0 and all(b.nearest == prompt.color for b in v.blobs))
    return v.count and v.shape and color_ok and v.background is not False


def _color_prompts() -> dict[str, list[Prompt]]:
    return {c: [p for p in all_prompts() if p.color == c] for c in COLORS}


def recolored(prompt: Prompt, seed: int, rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """A render of ``prompt`` whose objects are drawn in ``rgb`` instead of the prompt's colour."""
    return np.asarray(draw_scene(sample_scene(prompt, seed), size, fill={prompt.color: rgb}))


def _renders(prompts: list[Prompt], n: int, offset: int, cfg: OracleCheckConfig, rgb=None):
    """``n`` renders cycling through ``prompts`` (uint8 (H, W, 3) each) with their prompts."""
    out = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        s = seeds.render_seed(cfg.seed, i, offset)
        out.append((p, np.asarray(render(p, s, cfg.size)) if rgb is None else recolored(p, s, rgb, cfg.size)))
    return out


def _degrade(img: np.ndarray, rng: np.random.Generator, cfg: OracleCheckConfig) -> np.ndarray:
    return degrade(img, rng, rng.uniform(*cfg.blur_sigma), rng.uniform(*cfg.noise_sigma))


def check_correct_colors(cfg: OracleCheckConfig, vae: VaeRoundTrip) -> dict[str, dict[str, float]]:
    """Colour -> variant -> accept rate of renders in the palette colour (CORRECT_VARIANTS)."""
    rng = seeds.rng(cfg.seed, seeds.Stream.ORACLE_CHECK, 1)
    out = {}
    for ci, (c, prompts) in enumerate(_color_prompts().items()):
        pairs = _renders(prompts, cfg.correct_per_variant, 200_000 + 10_000 * ci, cfg)
        images = np.stack([img for _, img in pairs])
        variants = {"clean": images, "blurred": np.stack([_degrade(im, rng, cfg) for im in images]),
                    "vae": vae(images, seed=cfg.seed + ci)}
        out[c] = {v: float(np.mean([bool(judge(im, p).color) for (p, _), im in zip(pairs, variants[v])]))
                  for v in CORRECT_VARIANTS}
    return out


def check_hue_sweep(cfg: OracleCheckConfig) -> list[SweepRow]:
    """Accept rate of every shifted sweep step (blurred with noise) against the palette colour's prompts."""
    rng = seeds.rng(cfg.seed, seeds.Stream.ORACLE_CHECK, 2)
    prompts = _color_prompts()
    rows = []
    steps = [s for s in sweep_steps(cfg.hue_step) if s.zone != "correct"]
    for k, step in enumerate(tqdm(steps, desc="oracle-check: hue sweep", unit="step", file=sys.stderr)):
        pairs = _renders(prompts[step.color], cfg.sweep_per_step, 300_000 + 1_000 * k, cfg, rgb=step.rgb)
        ok = [bool(judge(_degrade(img, rng, cfg), p).color) for p, img in pairs]
        rows.append(SweepRow(step, len(ok), float(np.mean(ok))))
    return rows


def check_agreement(cfg: OracleCheckConfig) -> Agreement | None:
    """This oracle against the previous one on base-model samples of every prompt."""
    if cfg.agreement_samples_per_prompt < 1:
        return None
    from core.loading import load_sd_pipeline
    from evaluation.oracle import sample_and_judge

    pipe = load_sd_pipeline(cfg.base)
    judged = sample_and_judge(pipe, all_prompts(), cfg.agreement_samples_per_prompt, cfg.seed, progress=True)
    new = np.array([s.verdict.aligned for s in judged])
    old = np.array([rgb_snapping_aligned(s.verdict, s.prompt) for s in judged])
    return Agreement(len(judged), float(np.mean(new == old)), float(np.mean(old & ~new)), float(np.mean(new & ~old)))


def _pooled(rows: list[SweepRow], zone: str) -> float:
    picked = [r for r in rows if r.step.zone == zone]
    n = sum(r.n for r in picked)
    return sum(r.accepted * r.n for r in picked) / n if n else float("nan")


def check_oracle(cfg: OracleCheckConfig) -> tuple[OracleCheckResult, list[SweepRow]]:
    if not cfg.hue_step > 0 or min(cfg.n_images, cfg.sweep_per_step, cfg.correct_per_variant) < 1:
        raise UserError(f"hue_step={cfg.hue_step}, n_images={cfg.n_images}, sweep_per_step={cfg.sweep_per_step} "
                        f"and correct_per_variant={cfg.correct_per_variant} must be positive.",
                        "set hue_step above 0 and the counts to 1 or more.")
    check_folder(Path(cfg.vae), "model_index.json", "Stable Diffusion pipeline")
    if cfg.agreement_samples_per_prompt > 0:
        check_folder(Path(cfg.base), "model_index.json", "Stable Diffusion pipeline")
    rng = seeds.rng(cfg.seed, seeds.Stream.ORACLE_CHECK)
    prompts = all_prompts()
    clean, degraded, noise = [], [], []
    mismatch: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    t0 = time.perf_counter()
    for i in tqdm(range(cfg.n_images), desc="oracle-check", unit="img", file=sys.stderr):
        p = prompts[i % len(prompts)]
        img = np.asarray(render(p, seed=seeds.render_seed(cfg.seed, i), size=cfg.size))
        clean.append(judge(img, p).aligned)
        d = degrade(img, rng, rng.uniform(*cfg.blur_sigma), rng.uniform(*cfg.noise_sigma))
        degraded.append(judge(d, p).aligned)
        attr = p.specified[int(rng.integers(len(p.specified)))]
        mismatch[attr].append(judge(d, perturb(p, attr, rng)).aligned)
        noisy = rng.integers(0, 256, size=img.shape, dtype=np.uint8)
        noise.append(judge(noisy, p).aligned)
    elapsed = time.perf_counter() - t0
    by_color = check_correct_colors(cfg, VaeRoundTrip(cfg.vae))
    rows = check_hue_sweep(cfg)
    agreement = check_agreement(cfg)
    all_mm = [x for xs in mismatch.values() for x in xs]
    render_acc = float(np.mean(clean + degraded))
    noise_rate = float(np.mean(noise))
    mm_rate = float(np.mean(all_mm))
    correct = {v: float(np.mean([by_color[c][v] for c in by_color])) for v in CORRECT_VARIANTS}
    other = _pooled(rows, "other name")
    result = OracleCheckResult(
        n_images=cfg.n_images,
        render_accuracy=round(render_acc, 4),
        clean_accuracy=round(float(np.mean(clean)), 4),
        degraded_accuracy=round(float(np.mean(degraded)), 4),
        noise_aligned_rate=round(noise_rate, 4),
        mismatch_aligned_rate=round(mm_rate, 4),
        mismatch_aligned_by_attribute={a: round(float(np.mean(v)), 4) for a, v in mismatch.items() if v},
        correct_accept={v: round(x, 4) for v, x in correct.items()},
        correct_accept_by_color={c: {v: round(x, 4) for v, x in d.items()} for c, d in by_color.items()},
        other_name_accept_rate=round(other, 4),
        same_name_accept_rate=round(_pooled(rows, "same name"), 4),
        agreement=agreement,
        ms_per_image=round(1000 * elapsed / (4 * cfg.n_images), 3),  # four judgements per image
        targets_met=(render_acc >= 0.99 and noise_rate <= 0.05 and mm_rate <= 0.05
                     and min(x for d in by_color.values() for x in d.values()) >= CORRECT_MIN
                     and other <= OTHER_NAME_MAX and (agreement is None or agreement.agree >= AGREEMENT_MIN)),
    )
    return result, rows


def sweep_table(by_color: dict[str, dict[str, float]], rows: list[SweepRow]) -> str:
    """Markdown: the palette colours' accept rates per variant, then one row per hue step."""
    lines = ["| colour | " + " | ".join(f"{v} accepted (%)" for v in CORRECT_VARIANTS) + " |",
             "|---|" + "---|" * len(CORRECT_VARIANTS)]
    lines += [f"| {c} | " + " | ".join(f"{100 * d[v]:.1f}" for v in CORRECT_VARIANTS) + " |" for c, d in by_color.items()]
    lines += ["", "| colour | towards | hue shift (deg) | CIELAB hue | RGB | a person says | zone | accepted (%) | n |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.step.color} | {r.step.towards} | {r.step.shift:.0f} | {r.step.hue:.0f} | {r.step.rgb} | "
              f"{r.step.person} | {r.step.zone} | {100 * r.accepted:.1f} | {r.n} |" for r in rows]
    return "\n".join(lines)


def oracle_check(cfg: OracleCheckConfig) -> int:
    """Run it with ``cfg``; the exit status (0: every check held)."""
    result, rows = check_oracle(cfg)
    print(sweep_table(result.correct_accept_by_color, rows))
    print(json.dumps(asdict(result)))
    return 0 if result.targets_met else 1

