"""Evaluate the base model and fine-tuned models on the same prompts with the same seeds.

Per model: mean reward (the learned reward model), oracle alignment by category (shapes world;
see :func:`data.shapes.oracle.alignment_by_category`), and a fidelity proxy: the Frechet distance
between CLIP image embeddings of the model's samples and of renders of the same prompts (FID's
formula in CLIP space; lower is closer to the true image distribution).  Writes a Markdown table,
metrics.json and, per model, a PNG grid of the same seeds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.errors import UserError
from data.loading import SHAPES_CLIP, SHAPES_SD, check_folder, load_clip, load_sd_pipeline
from data.sampling import SamplingConfig, generate_images
from data.shapes.oracle import alignment_by_category, judge
from data.shapes.render import render
from data.shapes.world import Prompt, prompt_set
from finetune.common import image_grid, load_reward, pil_to_tensor, score_in_batches
from finetune.config import RewardConfig

ALIGNMENT_KEYS = ("color", "count", "background", "combination", "overall")


@dataclass(frozen=True)
class EvalConfig:
    base: str = str(SHAPES_SD)
    # name=path of a fine-tuned run (LoRA weights or a full pipeline folder); missing ones are skipped
    models: tuple[str, ...] = ("dpok=runs/finetune-dpok", "rwl=runs/finetune-rwl")
    split: str = "heldout"  # shapes-world prompt set evaluated (the fine-tuning targets)
    prompts_file: str | None = None  # one prompt per line: evaluated instead of `split`
    # prompts never fine-tuned on, reported as generalisation (minus any evaluated prompt); None: none
    generalization_split: str | None = None
    control_split: bool = True  # also evaluate control prompts (train prompts with one or two objects)
    samples_per_prompt: int = 4
    seed: int = 1234
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    clip: str = str(SHAPES_CLIP)  # CLIP folder for the fidelity proxy
    output_dir: str = "reports/eval"
    grid_prompts: int = 8  # prompts shown in the before/after grids


@dataclass
class ModelEval:
    name: str
    alignment: dict[str, float]  # on the evaluated (target) prompts
    controls: dict[str, float]
    reward: float
    fidelity: float
    n_images: int
    generalization: dict[str, float] = field(default_factory=dict)  # unseen prompts (NaN if none)
    per_prompt: dict[str, float] = field(default_factory=dict)  # evaluated prompt -> share of samples aligned


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two sets of embeddings (N, D)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


@torch.no_grad()
def clip_image_embeddings(clip, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Unit-norm CLIP image embeddings (N, D) of images (N, 3, H, W) in [0, 1], preprocessed in
    torch exactly as the reward model does (its image processor's resize, crop and normalisation)."""
    from reward.preprocess import ClipPreprocess

    preprocess = ClipPreprocess.from_processor(clip.image_processor)
    device = clip.model.device
    out = []
    for i in range(0, len(images), batch_size):
        feats = clip.model.get_image_features(pixel_values=preprocess(images[i:i + batch_size].float().to(device)))
        feats = getattr(feats, "pooler_output", feats)
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def load_finetuned(base: str | os.PathLike, run_dir: str | os.PathLike, device=None):
    """A pipeline for a fine-tuning output: a full pipeline folder, or base + LoRA weights."""
    run_dir = Path(run_dir)
    if (run_dir / "model_index.json").is_file():
        return load_sd_pipeline(run_dir, device=device)
    if not (run_dir / "pytorch_lora_weights.safetensors").is_file():
        raise UserError(f"{run_dir} holds no fine-tuned model (no LoRA weights, no pipeline).",
                        "run `make finetune` first, or pass the folder it wrote.")
    pipe = load_sd_pipeline(base, device=device)
    pipe.load_lora_weights(run_dir)
    return pipe


def _models(cfg: EvalConfig) -> list[tuple[str, Path]]:
    out = []
    for item in cfg.models:
        if "=" not in item:
            raise UserError(f"model '{item}' is not name=path.", "write e.g. models=[dpok=runs/finetune-dpok].")
        name, path = item.split("=", 1)
        if Path(path).exists():
            out.append((name, Path(path)))
    return out


def control_prompts(exclude: set[str] = frozenset()) -> list[Prompt]:
    """Train prompts with one or two objects (minus ``exclude``, e.g. the targets): what the base
    model already gets mostly right, where fine-tuning must do no collateral damage."""
    return [p for p in prompt_set("train") if p.count <= 2 and p.text not in exclude]


def evaluated_prompts(cfg: EvalConfig) -> list[Prompt]:
    """The target prompts: ``prompts_file`` (shapes-world prompts, one per line) or ``split``."""
    if not cfg.prompts_file:
        return prompt_set(cfg.split)  # raises on an unknown split
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist.", "pass a text file, one prompt per line.")
    texts = [t.strip() for t in path.read_text().splitlines() if t.strip()]
    if not texts:
        raise UserError(f"prompts file {path} holds no prompt.", "write one prompt per line.")
    return [Prompt.parse(t) for t in texts]


def evaluate(cfg: EvalConfig, progress=None) -> list[ModelEval]:
    check_folder(Path(cfg.base), "model_index.json", "Stable Diffusion pipeline")
    prompts = evaluated_prompts(cfg)
    chosen = {p.text for p in prompts}
    unseen = [p for p in prompt_set(cfg.generalization_split) if p.text not in chosen] if cfg.generalization_split else []
    controls = control_prompts(chosen) if cfg.control_split else []
    reward = load_reward(cfg.reward, device=None) if cfg.reward.kind == "oracle" or Path(cfg.reward.path).is_dir() else None
    clip = load_clip(cfg.clip) if Path(cfg.clip).is_dir() else None
    names = [("base", Path(cfg.base))] + _models(cfg)
    all_prompts = prompts + controls + unseen
    texts = [p.text for p in all_prompts for _ in range(cfg.samples_per_prompt)]
    seeds = [cfg.seed * 1000 + i for i in range(len(texts))]  # the same seeds for every model
    n_main = len(prompts) * cfg.samples_per_prompt
    n_ctrl = len(controls) * cfg.samples_per_prompt
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = None
    results = []
    for name, path in names:
        pipe = load_sd_pipeline(path) if name == "base" else load_finetuned(cfg.base, path)
        images = generate_images(pipe, texts, seeds, cfg.sampling, progress=progress)
        size = images[0].size[0]
        verdicts = [judge(im, t) for im, t in zip(images, texts)]
        parsed = [Prompt.parse(t) for t in texts]
        align = alignment_by_category(parsed[:n_main], verdicts[:n_main])
        ctrl = alignment_by_category(parsed[n_main:n_main + n_ctrl], verdicts[n_main:n_main + n_ctrl]) if controls else {}
        gen = alignment_by_category(parsed[n_main + n_ctrl:], verdicts[n_main + n_ctrl:]) if unseen else {}
        tensor = pil_to_tensor(images[:n_main])
        mean_reward = float("nan")
        if reward is not None:
            mean_reward = float(score_in_batches(reward, tensor, texts[:n_main], cfg.reward.batch_size).mean())
        fidelity = float("nan")
        if clip is not None:
            if reference is None:
                renders = pil_to_tensor([render(t, s, size) for t, s in zip(texts[:n_main], seeds[:n_main])])
                reference = clip_image_embeddings(clip, renders)
            fidelity = frechet_distance(clip_image_embeddings(clip, tensor), reference)
        results.append(ModelEval(name, {k: align[k] for k in ALIGNMENT_KEYS},
                                 {k: ctrl.get(k, float("nan")) for k in ALIGNMENT_KEYS}, mean_reward, fidelity, n_main,
                                 {k: gen.get(k, float("nan")) for k in ALIGNMENT_KEYS},
                                 _pass_rates(texts[:n_main], verdicts[:n_main])))
        _save_grid(images, texts, cfg, out / f"samples-{name}.png")
        del pipe
    write_report(results, cfg, out)
    return results


def _pass_rates(texts: list[str], verdicts) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for t, v in zip(texts, verdicts):
        hits.setdefault(t, []).append(bool(v.aligned))
    return {t: float(np.mean(h)) for t, h in hits.items()}


def _save_grid(images, texts, cfg: EvalConfig, path: Path) -> None:
    """The first ``grid_prompts`` prompts, one row each, ``samples_per_prompt`` seeds across."""
    k = cfg.samples_per_prompt
    rows = images[:cfg.grid_prompts * k]
    Image.fromarray(image_grid(pil_to_tensor(rows), ncols=k)).save(path)
    (path.with_suffix(".txt")).write_text("\n".join(texts[i * k] for i in range(len(rows) // k)) + "\n")


def markdown_table(results: list[ModelEval]) -> str:
    head = ("| model | " + " | ".join(ALIGNMENT_KEYS)
            + " | generalization overall | controls overall | mean reward | fidelity (CLIP-FD, lower is better) |")
    sep = "|" + "---|" * (len(ALIGNMENT_KEYS) + 5)
    rows = [head, sep]
    for r in results:
        cells = [f"{r.alignment[k]:.3f}" for k in ALIGNMENT_KEYS]
        rows.append(f"| {r.name} | " + " | ".join(cells)
                    + f" | {r.generalization.get('overall', float('nan')):.3f} | {r.controls['overall']:.3f}"
                    f" | {r.reward:.3f} | {r.fidelity:.4f} |")
    return "\n".join(rows)


def write_report(results: list[ModelEval], cfg: EvalConfig, out: Path) -> None:
    from pipelines.config import to_dict

    table = markdown_table(results)
    (out / "results.md").write_text(
        f"# Evaluation on {cfg.prompts_file or cfg.split} prompts, {cfg.samples_per_prompt} samples per prompt "
        f"(seed {cfg.seed})\n\n"
        f"Alignment: oracle verdicts by category; controls: train prompts with one or two objects.\n\n{table}\n")
    (out / "metrics.json").write_text(json.dumps(
        {"config": to_dict(cfg), "models": {r.name: asdict(r) for r in results}}, indent=2))
