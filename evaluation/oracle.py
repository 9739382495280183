"""The oracle's side of every evaluation, the one module through which evaluation reads the shapes
world: sampling and judging shapes-world prompts, the reported figures
(:data:`shapes.oracle.ALIGNMENT_KEYS`), per-prompt pass rates, the named prompt groups ("common",
"rare_counts", control prompts) that ``make eval``, the demo and the base card share, and renders of
prompts as a fidelity reference.

Seeds: image i of an evaluated list gets :func:`core.seeds.eval_seeds` ``(seed, n)[i]``, so the
same list, ``seed`` and sampling give the same images in every evaluation that draws them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import UserError
from core.sampling import SamplingConfig, generate_images
from core.seeds import eval_seeds
from shapes.oracle import ALIGNMENT_KEYS, Verdict, alignment_by_category, judge, off_palette_share
from shapes.regions import problem_regions
from shapes.render import render
from shapes.world import CATEGORIES, Prompt, prompt_set


@dataclass(frozen=True)
class JudgedSample:
    prompt: Prompt
    seed: int
    verdict: Verdict
    image: Image.Image


@dataclass
class Alignment:
    """Oracle figures over one set of prompts (fractions in [0, 1]; NaN where nothing applies): the
    :data:`ALIGNMENT_KEYS`, and breakdowns for the base model's card."""

    n_prompts: int
    n_images: int
    color: float
    count: float
    background: float
    combination: float
    overall: float
    by_category: dict[str, float]  # overall alignment of the prompts of each category
    by_count: dict[int, float]  # overall alignment by the prompt's count
    mean_objects: float  # objects the oracle found per image


def figures(prompts: list[Prompt], verdicts: list[Verdict]) -> dict[str, float]:
    """The :data:`ALIGNMENT_KEYS` figures of judged images (all NaN for none)."""
    figs = alignment_by_category(prompts, verdicts)
    return {k: figs[k] for k in ALIGNMENT_KEYS}


def alignment(samples: list[JudgedSample]) -> Alignment:
    prompts = [s.prompt for s in samples]
    verdicts = [s.verdict for s in samples]
    figs = alignment_by_category(prompts, verdicts)

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else float("nan")

    return Alignment(
        n_prompts=len(set(prompts)), n_images=len(samples), **{k: figs[k] for k in ALIGNMENT_KEYS},
        by_category={c: figs[f"aligned_{c}_prompts"] for c in CATEGORIES},
        by_count={c: mean([v.aligned for p, v in zip(prompts, verdicts) if p.count == c])
                  for c in sorted({p.count for p in prompts})},
        mean_objects=mean([v.n_objects for v in verdicts]))


def sample_and_judge(pipe, prompts: list[Prompt], samples_per_prompt: int, seed: int,
                     sampling: SamplingConfig = SamplingConfig(), progress: bool = False
                     ) -> list[JudgedSample]:
    """``samples_per_prompt`` consecutive images per prompt, the list seeded by
    :func:`core.seeds.eval_seeds` ``(seed, n)``, each judged by the oracle."""
    owners = [p for p in prompts for _ in range(samples_per_prompt)]
    seeds = eval_seeds(seed, len(owners))
    bar = tqdm(total=len(owners), desc="sample", unit="img", file=sys.stderr, disable=not progress,
               mininterval=2.0)
    images = generate_images(pipe, [p.text for p in owners], seeds, sampling, progress=bar)
    bar.close()
    return [JudgedSample(p, s, judge(img, p), img) for p, s, img in zip(owners, seeds, images)]


def pass_rates(texts: list[str], verdicts: list[Verdict]) -> dict[str, float]:
    """Per prompt text, the share of its images the oracle judged aligned (first-seen order)."""
    hits: dict[str, list[bool]] = {}
    for t, v in zip(texts, verdicts):
        hits.setdefault(t, []).append(bool(v.aligned))
    return {t: float(np.mean(h)) for t, h in hits.items()}


def is_common(prompt: Prompt) -> bool:
    """One or two objects: what the skewed base model mostly saw in training (rare: three, four)."""
    return prompt.count <= 2


def subsets(train: list[JudgedSample]) -> dict[str, list[JudgedSample]]:
    """The base card's headline subsets of the train split's samples: "common" (one or two
    objects) and "rare_counts" (three or four, rare in the skewed training data)."""
    return {"common": [s for s in train if is_common(s.prompt)],
            "rare_counts": [s for s in train if not is_common(s.prompt)]}


def control_prompts(exclude: set[str] = frozenset()) -> list[Prompt]:
    """The common train prompts minus ``exclude`` (e.g. the targets): what the base model already
    gets mostly right, where fine-tuning must do no collateral damage."""
    return [p for p in prompt_set("train") if is_common(p) and p.text not in exclude]


def shapes_prompts(texts: list[str]) -> list[Prompt] | None:
    """The texts as shapes-world prompts, or None when any of them is not one (no oracle then)."""
    try:
        return [Prompt.parse(t) for t in texts]
    except UserError:
        return None


def split_prompts(split: str) -> list[str]:
    """The texts of a shapes-world prompt set (an unknown set is one clear error)."""
    return [p.text for p in prompt_set(split)]


def reference_renders(texts: list[str], seeds: list[int], size: int) -> list[Image.Image]:
    """A render of each text with its seed, ``size`` pixels square: the fidelity reference of
    shapes-world prompts."""
    return [render(t, s, size) for t, s in zip(texts, seeds)]


def judged_figures(images: list, texts: list[str], parts: dict[str, slice]
                   ) -> tuple[dict[str, dict[str, float]], dict[str, float], list[Verdict]]:
    """Every image judged against its text; per named part of the list (a slice) the
    :data:`ALIGNMENT_KEYS` figures and the share of off-palette objects; and the verdicts."""
    verdicts = [judge(im, t) for im, t in zip(images, texts)]
    parsed = [Prompt.parse(t) for t in texts]
    figs = {where: figures(parsed[s], verdicts[s]) for where, s in parts.items()}
    off = {where: off_palette_share(verdicts[s]) for where, s in parts.items()}
    return figs, off, verdicts


def oracle_regions(images: list, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, the oracle's exact (problem, leave-alone) masks, (H, W) bool each
    (:func:`shapes.regions.problem_regions`): for evaluation only, never shown to a model."""
    out = []
    for im, t in zip(images, texts):
        r = problem_regions(im, t)
        out.append((r.mask, r.keep))
    return out

