"""Evaluation of shapes-world models (library; reused by ``make base`` and the fine-tuning eval).

Text-to-image model (:func:`evaluate_model`): K samples per prompt with fixed seeds (sample i of
every prompt uses seed ``seed_offset + i``, so two models or two checkpoints are compared on the
same starting noise) drawn through :func:`core.sampling.generate_images`; the oracle judges each
image; :func:`shapes.oracle.alignment_by_category` gives the figures (colour, count, shape,
background, combination, overall) for each prompt set ("train", "heldout", or any named set you
pass) and for named subsets ("common": one or two objects of the train split, "rare_counts":
three or four); a PNG grid of samples per (set, category).

CLIP (:func:`clip_retrieval`): zero-shot retrieval on renders with seeds no training used: the
model must score an image's true prompt above every one-attribute perturbation of it (count,
shape, colour or background swapped), clean and blurred/noisy.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from core.sampling import SamplingConfig, generate_images
from shapes.oracle import Verdict, alignment_by_category, judge
from shapes.render import degrade, render
from shapes.world import CATEGORIES, Prompt, one_attribute_swaps, prompt_set


# --------------------------------------------------------------------------------------------
# Text-to-image model

@dataclass(frozen=True)
class EvalConfig:
    samples_per_prompt: int = 4  # K
    seed_offset: int = 0  # sample i of each prompt uses seed seed_offset + i
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    splits: tuple[str, ...] = ("train", "heldout")
    grid_prompts: int = 8  # rows (prompts) per category grid; columns are the K samples


@dataclass(frozen=True)
class JudgedSample:
    prompt: Prompt
    seed: int
    verdict: Verdict
    image: Image.Image


@dataclass
class Alignment:
    """Oracle figures over one set of prompts (fractions in [0, 1]; NaN where nothing applies)."""

    n_prompts: int
    n_images: int
    color: float
    count: float
    shape: float
    background: float
    combination: float
    overall: float
    by_category: dict[str, float]  # overall alignment of the prompts of each category
    by_count: dict[int, float]  # overall alignment by the prompt's count
    mean_objects: float  # objects the oracle found per image


@dataclass
class ModelEvaluation:
    sets: dict[str, Alignment]  # "train", "heldout", and the subsets "common", "rare_counts"
    grids: dict[str, str] = field(default_factory=dict)  # "<set>/<category>" -> PNG path
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sets": {k: asdict(v) for k, v in self.sets.items()}, "grids": self.grids,
                "seconds": round(self.seconds, 1), "config": self.config}


def alignment(samples: list[JudgedSample]) -> Alignment:
    prompts = [s.prompt for s in samples]
    verdicts = [s.verdict for s in samples]
    figs = alignment_by_category(prompts, verdicts)

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else float("nan")

    return Alignment(
        n_prompts=len(set(prompts)), n_images=len(samples),
        color=figs["color"], count=figs["count"], shape=figs["shape"],
        background=figs["background"], combination=figs["combination"], overall=figs["overall"],
        by_category={c: figs[f"aligned_{c}_prompts"] for c in CATEGORIES},
        by_count={c: mean([v.aligned for p, v in zip(prompts, verdicts) if p.count == c])
                  for c in sorted({p.count for p in prompts})},
        mean_objects=mean([v.n_objects for v in verdicts]))


def sample_and_judge(pipe, prompts: list[Prompt], samples_per_prompt: int, seed_offset: int = 0,
                     sampling: SamplingConfig = SamplingConfig(), progress: bool = False
                     ) -> list[JudgedSample]:
    """K images per prompt (seeds ``seed_offset .. seed_offset+K-1``), each judged by the oracle."""
    texts, seeds, owners = [], [], []
    for p in prompts:
        for i in range(samples_per_prompt):
            texts.append(p.text)
            seeds.append(seed_offset + i)
            owners.append(p)
    bar = tqdm(total=len(texts), desc="sample", unit="img", file=sys.stderr, disable=not progress,
               mininterval=2.0)
    images = generate_images(pipe, texts, seeds, sampling, progress=bar)
    bar.close()
    return [JudgedSample(p, s, judge(img, p), img) for p, s, img in zip(owners, seeds, images)]


def default_sets(splits: tuple[str, ...]) -> dict[str, list[Prompt]]:
    return {s: prompt_set(s) for s in splits}


def standard_subsets(samples: dict[str, list[JudgedSample]]) -> dict[str, list[JudgedSample]]:
    """The base model's headline subsets: "common" (train prompts with one or two objects) and
    "rare_counts" (train prompts with three or four objects, rare in the skewed training data)."""
    train = samples.get("train", [])
    return {"common": [s for s in train if s.prompt.count <= 2],
            "rare_counts": [s for s in train if s.prompt.count >= 3]}


def evaluate_model(pipe, cfg: EvalConfig = EvalConfig(), out_dir: str | Path | None = None,
                   prompt_sets: dict[str, list[Prompt]] | None = None,
                   subsets: Callable[[dict], dict] | None = standard_subsets,
                   progress: bool = False) -> ModelEvaluation:
    """Sample, judge and tabulate ``pipe`` on each prompt set (default: the train and held-out
    splits); write grids under ``out_dir/grids/`` when ``out_dir`` is given."""
    t0 = time.perf_counter()
    prompt_sets = prompt_sets or default_sets(cfg.splits)
    judged = {name: sample_and_judge(pipe, ps, cfg.samples_per_prompt, cfg.seed_offset,
                                     cfg.sampling, progress)
              for name, ps in prompt_sets.items()}
    sets = {name: alignment(s) for name, s in judged.items()}
    if subsets is not None:
        sets.update({name: alignment(s) for name, s in subsets(judged).items() if s})
    grids = {}
    if out_dir is not None:
        gdir = Path(out_dir) / "grids"
        gdir.mkdir(parents=True, exist_ok=True)
        for name, samples in judged.items():
            for cat in CATEGORIES:
                chosen = _grid_prompts([s.prompt for s in samples if s.prompt.category == cat],
                                       cfg.grid_prompts)
                if not chosen:
                    continue
                rows = [[s for s in samples if s.prompt == p] for p in chosen]
                path = gdir / f"{name}-{cat}.png"
                sample_grid(rows).save(path)
                grids[f"{name}/{cat}"] = str(path)
    return ModelEvaluation(sets, grids, time.perf_counter() - t0,
                           config=_jsonable(asdict(cfg)))


def _grid_prompts(prompts: list[Prompt], n: int) -> list[Prompt]:
    """Up to ``n`` distinct prompts spread evenly over the (sorted) list."""
    uniq = sorted(set(prompts), key=lambda p: (p.count, p.prompt_id))
    if len(uniq) <= n:
        return uniq
    return [uniq[int(i)] for i in np.linspace(0, len(uniq) - 1, n)]


def sample_grid(rows: list[list[JudgedSample]], label_width: int = 230) -> Image.Image:
    """One row per prompt: its text, then its samples, each framed green (aligned) or red."""
    k = max(len(r) for r in rows)
    side = rows[0][0].image.size[0]
    pad = 3
    cell = side + 2 * pad
    grid = Image.new("RGB", (label_width + k * cell, len(rows) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), row[0].prompt.text, fill=(0, 0, 0))
        for c, s in enumerate(row):
            x, y = label_width + c * cell, r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1],
                           fill=(40, 170, 60) if s.verdict.aligned else (220, 40, 40))
            grid.paste(s.image.convert("RGB").resize((side, side)), (x + pad, y + pad))
    return grid


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------
# CLIP

@dataclass(frozen=True)
class RetrievalConfig:
    per_prompt: int = 4  # renders per prompt (each prompt of ``split``)
    split: str = "all"
    seed: int = 10_000_000  # render seeds seed + i: disjoint from the training pools' seeds
    blur_sigma: float = 1.0  # the degraded copy of each render (px at 64 px)
    noise_sigma: float = 10.0
    batch_size: int = 256


@dataclass
class RetrievalResult:
    accuracy: float  # true prompt ranked first among itself + all its one-attribute perturbations
    clean_accuracy: float
    degraded_accuracy: float
    pairwise_by_attribute: dict[str, float]  # true prompt scored above a prompt with this swapped
    by_category: dict[str, float]
    n_images: int
    mean_candidates: float


@torch.no_grad()
def clip_embed_texts(clip, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) on the CPU, like :func:`clip_embed_images`, of a
    loaded CLIP (``core.loading.LoadedCLIP``)."""
    device = next(clip.model.parameters()).device
    batch = clip.tokenizer(texts, padding=True, return_tensors="pt").to(device)
    f = clip.model.get_text_features(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"])
    f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f.float(), dim=-1).cpu()


@torch.no_grad()
def clip_embed_images(clip, images: list, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings (N, D); images are PIL or uint8 HxWx3 arrays."""
    device = next(clip.model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        px = clip.image_processor(images=list(images[i:i + batch_size]), return_tensors="pt")
        f = clip.model.get_image_features(pixel_values=px["pixel_values"].to(device))
        f = getattr(f, "pooler_output", f)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    return torch.cat(out)


def clip_retrieval(clip, cfg: RetrievalConfig = RetrievalConfig()) -> RetrievalResult:
    """Zero-shot retrieval of the true prompt among its attribute-swapped variants."""
    prompts = prompt_set(cfg.split)
    rng = np.random.default_rng(cfg.seed)
    images, owners, degraded = [], [], []
    for p in prompts:
        for i in range(cfg.per_prompt):
            img = np.asarray(render(p, cfg.seed + i))
            images += [img, degrade(img, rng, cfg.blur_sigma, cfg.noise_sigma)]
            owners += [p, p]
            degraded += [False, True]
    texts = sorted({q.text for p in prompts for q in [p] + [x for _, x in one_attribute_swaps(p)]})
    col = {t: j for j, t in enumerate(texts)}
    sims = (clip_embed_images(clip, images, cfg.batch_size) @ clip_embed_texts(clip, texts).T).numpy()
    correct, pair = [], {}
    n_cands = []
    for i, p in enumerate(owners):
        pert = one_attribute_swaps(p)
        s_true = sims[i, col[p.text]]
        s_pert = np.array([sims[i, col[q.text]] for _, q in pert])
        correct.append(bool(np.all(s_true > s_pert)))
        n_cands.append(1 + len(pert))
        for (a, _), s in zip(pert, s_pert):
            pair.setdefault(a, []).append(s_true > s)
    correct = np.array(correct)
    degraded = np.array(degraded)
    cats = np.array([p.category for p in owners])
    return RetrievalResult(
        accuracy=float(correct.mean()), clean_accuracy=float(correct[~degraded].mean()),
        degraded_accuracy=float(correct[degraded].mean()),
        pairwise_by_attribute={a: float(np.mean(v)) for a, v in sorted(pair.items())},
        by_category={c: float(correct[cats == c].mean()) for c in CATEGORIES if (cats == c).any()},
        n_images=len(owners), mean_candidates=float(np.mean(n_cands)))
