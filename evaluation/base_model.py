"""The shapes-world base models' evaluation: ``make base``'s eval stage (:func:`evaluate_base`),
which writes each model folder's metrics.json, config.yaml, grids and README.md model card.

Text-to-image model (:func:`evaluate_model`): each split is evaluated as its own list, K images per
prompt seeded by :func:`core.seeds.eval_seeds` (as ``make eval``, so the card's held-out figure is
``make eval``'s base figure on ``split=heldout`` with the same K, seed and sampling); the oracle
judges each image; figures (:data:`shapes.oracle.ALIGNMENT_KEYS` and breakdowns) per split and for
the train split's "common" / "rare_counts" subsets; a grid of samples per (split, category).

CLIP (:func:`clip_retrieval`): zero-shot retrieval on renders with seeds no training used: the
model must score an image's true prompt above every one-attribute perturbation of it (count,
shape, colour or background swapped), clean and blurred/noisy.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from core.config import load_config, save_config, to_dict
from core.jsonable import json_safe
from core.families import pipeline_family
from core.loading import load_clip, load_sd_pipeline
from evaluation.embeddings import clip_image_embeddings, clip_text_embeddings
from evaluation.grids import sample_grid
from evaluation.oracle import Alignment, alignment, sample_and_judge, subsets
from shapes.render import degrade, render
from shapes.training.base import (TRAINING_STAGES, BaseConfig, BaseEvalConfig, BaseResult, RetrievalConfig,
                                  need_stage_output)
from shapes.training.cards import card_notes, write_clip_card, write_flow_card, write_sd_card
from shapes.training.flow import FLOW_SAMPLING
from shapes.training.vae import reconstruction_accuracy
from shapes.world import CATEGORIES, Prompt, one_attribute_swaps, prompt_set


# --------------------------------------------------------------------------------------------
# Text-to-image model

@dataclass
class ModelEvaluation:
    sets: dict[str, Alignment]  # "train", "heldout", and the subsets "common", "rare_counts"
    grids: dict[str, str] = field(default_factory=dict)  # "<set>/<category>" -> PNG path
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sets": {k: asdict(v) for k, v in self.sets.items()}, "grids": self.grids,
                "seconds": round(self.seconds, 1), "config": self.config}


def evaluate_model(pipe, cfg: BaseEvalConfig = BaseEvalConfig(), out_dir: str | Path | None = None,
                   prompt_sets: dict[str, list[Prompt]] | None = None,
                   progress: bool = False) -> ModelEvaluation:
    """Sample, judge and tabulate ``pipe`` on each prompt set (default: ``cfg.splits``), plus the
    "common" / "rare_counts" subsets of a "train" set; grids under ``out_dir/grids/`` when
    ``out_dir`` is given."""
    t0 = time.perf_counter()
    prompt_sets = prompt_sets or {s: prompt_set(s) for s in cfg.splits}
    judged = {name: sample_and_judge(pipe, ps, cfg.samples_per_prompt, cfg.seed, cfg.sampling, progress)
              for name, ps in prompt_sets.items()}
    sets = {name: alignment(s) for name, s in judged.items()}
    sets.update({name: alignment(s) for name, s in subsets(judged.get("train", [])).items() if s})
    grids = {}
    if out_dir is not None:
        gdir = Path(out_dir) / "grids"
        gdir.mkdir(parents=True, exist_ok=True)
        for name, samples in judged.items():
            for cat in CATEGORIES:
                chosen = _grid_prompts([s.prompt for s in samples if s.prompt.category == cat], cfg.grid_prompts)
                if not chosen:
                    continue
                rows = [[s for s in samples if s.prompt == p] for p in chosen]
                path = gdir / f"{name}-{cat}.png"
                sample_grid([[s.image for s in row] for row in rows], [p.text for p in chosen],
                            [[s.verdict.aligned for s in row] for row in rows]).save(path)
                grids[f"{name}/{cat}"] = str(path)
    return ModelEvaluation(sets, grids, time.perf_counter() - t0, config=to_dict(cfg))


def _grid_prompts(prompts: list[Prompt], n: int) -> list[Prompt]:
    """Up to ``n`` distinct prompts spread evenly over the (sorted) list."""
    uniq = sorted(set(prompts), key=lambda p: (p.count, p.prompt_id))
    if len(uniq) <= n:
        return uniq
    return [uniq[int(i)] for i in np.linspace(0, len(uniq) - 1, n)]


# --------------------------------------------------------------------------------------------
# CLIP

@dataclass
class RetrievalResult:
    accuracy: float  # true prompt ranked first among itself + all its one-attribute perturbations
    clean_accuracy: float
    degraded_accuracy: float
    pairwise_by_attribute: dict[str, float]  # true prompt scored above a prompt with this swapped
    by_category: dict[str, float]
    n_images: int
    mean_candidates: float


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
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    sims = clip_image_embeddings(clip, pixels, cfg.batch_size) @ clip_text_embeddings(clip, texts).T
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


# --------------------------------------------------------------------------------------------
# make base's eval stage

def evaluate_base(cfg: BaseConfig, trained: BaseResult) -> tuple[dict, dict]:
    """Evaluate the models this run trained (clip: the CLIP; vae, unet: shapes-sd; flow: shapes-flow)
    or, in an eval-only run, every model in ``out_dir`` (shapes-flow where there is one), and write
    in each folder metrics.json, config.yaml and README.md (and the text-to-image models' grids/);
    returns the CLIP's and shapes-sd's metrics (None for a model not evaluated)."""
    ran = {s for s in cfg.stages if s in TRAINING_STAGES}
    clip_dir, sd_dir, flow_dir = trained.clip_dir, trained.sd_dir, trained.flow_dir
    todo = {"clip": "clip" in ran or not ran, "sd": bool(ran & {"vae", "unet"}) or not ran,
            "flow": "flow" in ran or (not ran and flow_dir.exists())}
    for name, path, stage in (("clip", clip_dir / "config.json", "clip"), ("sd", sd_dir / "model_index.json", "unet"),
                              ("flow", flow_dir / "model_index.json", "flow")):
        if todo[name]:
            need_stage_output(path, stage)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    written = []  # (folder, metrics, card writer)
    clip_metrics = sd_metrics = None
    if todo["clip"]:
        clip = load_clip(clip_dir, device=device)
        retrieval = clip_retrieval(clip, cfg.retrieval)
        clip_metrics = {"retrieval": asdict(retrieval), "retrieval_config": to_dict(cfg.retrieval),
                        "n_params": sum(p.numel() for p in clip.model.parameters()),
                        "targets": {"retrieval_accuracy>=0.90": retrieval.accuracy >= 0.90}}
        print(f"clip retrieval accuracy {retrieval.accuracy:.3f} (clean {retrieval.clean_accuracy:.3f}, "
              f"degraded {retrieval.degraded_accuracy:.3f})", flush=True)
        written.append((clip_dir, clip_metrics, write_clip_card))
    if todo["sd"]:
        sd_metrics = _text_to_image_metrics(sd_dir, cfg.eval, device, cfg.progress)
        sets = sd_metrics["sets"]
        common, rare, held = sets["common"]["overall"], sets["rare_counts"]["overall"], sets["heldout"]["overall"]
        sd_metrics["targets"] = {"common_overall>=0.60": common >= 0.60, "rare_counts_overall<=0.40": rare <= 0.40,
                                 "heldout_overall<=0.40": held <= 0.40}
        print(f"sd overall alignment: common {common:.3f}, rare counts {rare:.3f}, held-out {held:.3f}",
              flush=True)
        written.append((sd_dir, sd_metrics, write_sd_card))
    if todo["flow"]:
        # shapes-flow samples with no T5 tokens, as it was trained
        flow_eval = replace(cfg.eval, sampling=replace(cfg.eval.sampling,
                                                       max_sequence_length=FLOW_SAMPLING.max_sequence_length))
        flow_metrics = _text_to_image_metrics(flow_dir, flow_eval, device, cfg.progress)
        sets = flow_metrics["sets"]
        sd_file = sd_dir / "metrics.json"
        sd_record = sd_metrics or (json.loads(sd_file.read_text()) if sd_file.is_file() else None)
        sd_train = None if sd_record is None else sd_record["sets"]["train"]["overall"]
        flow_metrics["shapes_sd_train_overall"] = sd_train
        flow_metrics["targets"] = {
            "train_overall_within_0.10_of_shapes_sd": None if sd_train is None else
            sets["train"]["overall"] >= sd_train - 0.10,
            "rare_counts_overall<=0.40": sets["rare_counts"]["overall"] <= 0.40,
            "heldout_overall<=0.40": sets["heldout"]["overall"] <= 0.40}
        print(f"flow overall alignment: train {sets['train']['overall']:.3f} (shapes-sd {sd_train}), "
              f"rare counts {sets['rare_counts']['overall']:.3f}, held-out {sets['heldout']['overall']:.3f}",
              flush=True)
        written.append((flow_dir, flow_metrics, write_flow_card))
    eval_s = time.perf_counter() - t0
    seconds = {**trained.seconds_by_stage, "eval": eval_s, "total_this_run": trained.seconds_this_run + eval_s}
    for d, m, write_card in written:
        # a model this run did not train keeps its training record (its weights are an earlier run's)
        reevaluate = not ran or (d == clip_dir and "clip" not in ran) or (d == sd_dir and not ran & {"vae", "unet"})
        record, tree = _training_record(d, cfg, seconds, reevaluate)
        notes = card_notes(d) if reevaluate else None  # hand-written notes describe those weights
        m.update(record)
        # Strict JSON (NaN -> null: a category with no prompts in a set) so any parser opens it.
        (d / "metrics.json").write_text(json.dumps(json_safe(m, digits=4), indent=2, default=str))
        save_config(tree, d / "config.yaml")
        write_card(d, m, load_config(BaseConfig, d / "config.yaml"), notes)
    return clip_metrics, sd_metrics


def _text_to_image_metrics(model_dir: Path, cfg: BaseEvalConfig, device, progress: bool) -> dict:
    """A text-to-image folder's card figures: :func:`evaluate_model` (grids in the folder), the
    VAE's reconstruction accuracy and the parameter counts."""
    from diffusers import AutoencoderKL

    pipe = load_sd_pipeline(model_dir, device=device)
    ev = evaluate_model(pipe, cfg, out_dir=model_dir, progress=progress)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True).to(device)
    family = pipeline_family(pipe)
    denoiser = getattr(pipe, family.denoiser)
    return {**ev.to_dict(),
            "grids": {k: str(Path(v).relative_to(model_dir)) for k, v in ev.grids.items()},
            "vae_reconstruction": reconstruction_accuracy(vae),
            "n_params": {family.denoiser: sum(p.numel() for p in denoiser.parameters()),
                         **{name: sum(p.numel() for p in m.parameters()) for name, m in
                            (("text_encoder", pipe.text_encoder), ("text_encoder_2", getattr(pipe, "text_encoder_2", None)))
                            if m is not None},
                         "vae": sum(p.numel() for p in pipe.vae.parameters())}}


def _training_record(model_dir: Path, cfg: BaseConfig, seconds: dict[str, float], keep: bool) -> tuple[dict, dict]:
    """The training record metrics.json and config.yaml carry (stage times, training minutes,
    threads; the config) and the config tree to save.  A run that trained nothing (``keep``) only
    re-evaluates: the folder's weights came from an earlier run, so that run's record stays, and
    only the eval and retrieval sections of its config are this run's."""
    train_s = {k: v for k, v in seconds.items() if k in TRAINING_STAGES}
    record = {"seconds_by_stage": {k: round(v, 1) for k, v in seconds.items()},
              "training_minutes": round(sum(train_s.values()) / 60, 1), "threads": cfg.threads}
    tree = to_dict(cfg)
    old_metrics, old_config = model_dir / "metrics.json", model_dir / "config.yaml"
    if keep and old_metrics.is_file() and old_config.is_file():
        old = json.loads(old_metrics.read_text())
        old_tree = yaml.safe_load(old_config.read_text())
        trained = {k: v for k, v in old.get("seconds_by_stage", {}).items() if k in TRAINING_STAGES}
        record = {"seconds_by_stage": {**trained, "eval": round(seconds["eval"], 1),
                                       "total_this_run": round(seconds["total_this_run"], 1)},
                  "training_minutes": old.get("training_minutes", record["training_minutes"]),
                  "threads": old.get("threads", record["threads"])}
        tree = {**old_tree, "eval": tree["eval"], "retrieval": tree["retrieval"]}
    return record, tree
