"""A labeling round's images: sample ``per_prompt`` images of each prompt from a pipeline folder of
a supported family (core.families: Stable Diffusion 1.x/2.x, default the shapes-world model; SD3;
FLUX) or a fine-tuned run of one, with recorded seeds,
into the dataset root at ``root`` as round ``round`` (``make generate``, :mod:`pipelines.generate`).

Every row records the model that made it (``model_fingerprint``, and ``run``: the fine-tuned run
folder, null for a base model).  Re-running adds images with seeds not used before for that prompt
and model (the model's fingerprint, so a fine-tuned run's seeds are its own); nothing is
overwritten.  Images are saved batch by batch, so an interrupted run keeps what it finished.
``source=renderer`` draws the round with the shapes-world renderer instead (a stand-in when no model
is at hand; a share ``renderer_mismatch_rate`` of images shows a prompt with one attribute changed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tqdm import tqdm

from core import seeds
from core.config import NonNegativeInt, PositiveFloat, PositiveInt, Share
from core.errors import UserError
from core.loading import ModelRef, default_device, load_model, resolve_model, with_side_strength
from core.sampling import (MixedPrecision, SamplingConfig, describe_sampling, generate_images, sampler_settings,
                           sampling_dtype)
from data.generations import PromptSpec, prompt_spec, save_images
from data.schemas import GENERATIONS
from data.store import Store
from data.targets import read_prompts_file
from shapes import SHAPES_SD, world
from shapes.render import DEFAULT_SIZE, RENDERER, render
from shapes.world import Prompt, perturb, prompt_set


@dataclass(frozen=True)
class GenerateConfig:
    root: str = "datasets/shapes"
    source: Literal["pipeline", "renderer"] = "pipeline"
    # a pipeline folder (StableDiffusionPipeline, StableDiffusion3Pipeline, FluxPipeline) or a
    # fine-tuned run folder (make finetune's output_dir)
    pipeline: str = str(SHAPES_SD)
    adapter: Optional[str] = None
    """A folder with LoRA weights (pytorch_lora_weights.safetensors) fused into ``pipeline``, a
    base pipeline folder; None: ``pipeline`` as it is."""
    side_strength: Optional[PositiveFloat] = None
    """A side-network run's strength lambda (core.side); None: the one it was trained with."""
    round: NonNegativeInt = 0
    """The labeling round the images are made for (data.rounds; 0: the first, the base model's)."""
    prompts: Literal["train", "heldout", "all"] = "train"
    prompts_file: Optional[str] = None
    """A text file with one prompt per line, instead of a shapes-world prompt set."""
    max_prompts: Optional[PositiveInt] = None  # the first N prompts only; None: all
    per_prompt: PositiveInt = 4
    # false: per_prompt more images per prompt, with seeds this model has not used; true: the first
    # per_prompt seeds of the sequence, skipping those already made (a rerun after a kill completes
    # the round instead of adding to it; make loop's stages)
    fill: bool = False
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # autocast dtype of the sampling (core.sampling.sampling_dtype); auto: bf16 on a CUDA GPU that
    # has it, else fp32 ("no"), as for fine-tuning
    mixed_precision: MixedPrecision = "auto"
    renderer_mismatch_rate: Share = 0.3


@dataclass(frozen=True)
class GenerateResult:
    root: str
    model_id: str
    model_fingerprint: str | None  # None: renderer images
    run: str | None  # the fine-tuned run (or adapter) folder sampled from; None: a base model
    round: int
    prompts: int
    images_added: int
    images_in_round: int
    sampling: str  # the sampler and setting the images were drawn with (SamplingConfig.describe)


def _prompts(cfg: GenerateConfig) -> list[PromptSpec]:
    if cfg.prompts_file:
        out = [prompt_spec(t, world.prompt_spec) for t in dict.fromkeys(read_prompts_file(cfg.prompts_file))]
    else:
        out = [PromptSpec(p.text, p.prompt_id, p.category) for p in prompt_set(cfg.prompts)]
    return out[: cfg.max_prompts] if cfg.max_prompts is not None else out


def _used_seeds(gens, fingerprint: str, model_id: str) -> dict[str, set[int]]:
    """prompt_id -> seeds the model already used in this root, in any round.  Keyed by the model's
    fingerprint, so a fine-tuned run never takes the base's seeds as its own (or the reverse);
    rows written before fingerprints were recorded count by their model_id, as they did then."""
    legacy = gens["model_fingerprint"].isna() & (gens["model_id"] == model_id)
    mine = gens[(gens["model_fingerprint"] == fingerprint) | legacy]
    return mine.groupby("prompt_id")["seed"].apply(set).to_dict()


def _resolve(cfg: GenerateConfig) -> ModelRef:
    path = Path(cfg.pipeline)
    if not path.exists() and path.resolve() == SHAPES_SD.resolve():
        raise UserError(
            f"the shapes-world model {SHAPES_SD} is not there (it is trained by `make base`).",
            "pass another Stable Diffusion pipeline folder with pipeline=<folder>, train the shapes model "
            "first (make base), or draw a stand-in round with source=renderer.")
    ref = resolve_model(path, cfg.adapter)
    return ref if cfg.side_strength is None else with_side_strength(ref, cfg.side_strength)


def _new_seeds(used: set[int], base: int, n: int) -> list[int]:
    """The first ``n`` seeds of the sequence ``core.seeds.round_image_seed(base, i)`` that this
    prompt has not used."""
    out, i = [], 0
    while len(out) < n:
        s = seeds.round_image_seed(base, i)
        if s not in used:
            out.append(s)
        i += 1
    return out


def generate(cfg: GenerateConfig) -> GenerateResult:
    if cfg.source == "renderer" and cfg.adapter is not None:
        raise UserError(f"adapter={cfg.adapter} was given with source=renderer, which uses no model.",
                        "leave adapter out, or sample from a model with source=pipeline.")
    prompts = _prompts(cfg)
    # the pipeline's device (load_model); checked before the round's folder is touched
    dtype = sampling_dtype(cfg.mixed_precision, default_device()) if cfg.source == "pipeline" else None
    ref = _resolve(cfg) if cfg.source == "pipeline" else None  # every model error before any write
    store = Store(cfg.root)
    if ref is None:
        return _render(cfg, store, prompts)
    pipe = load_model(ref)
    # model_id: the folder(s) as given; the image ids hash the fingerprint (for a base model
    # model_fingerprint(pipeline), as before runs were models)
    model_id = str(cfg.pipeline) if cfg.adapter is None else f"{cfg.pipeline}+{cfg.adapter}"
    run = str(ref.run) if ref.run is not None else None
    used = _used_seeds(store.to_pandas(GENERATIONS), ref.fingerprint, model_id)
    if cfg.fill:
        first = [seeds.round_image_seed(cfg.seed, i) for i in range(cfg.per_prompt)]
        jobs = [(p, s) for p in prompts for s in first if s not in used.get(p.prompt_id, set())]
    else:
        jobs = [(p, s) for p in prompts for s in _new_seeds(used.get(p.prompt_id, set()), cfg.seed, cfg.per_prompt)]
    # the sampler actually run, as each row records it (the family's: core.families)
    settings = sampler_settings(cfg.sampling, pipe.scheduler, ref.family)
    sampling = describe_sampling(cfg.sampling, pipe.scheduler, ref.family)
    print(f"generate: sampling at {sampling}", file=sys.stderr, flush=True)
    added = 0
    with tqdm(total=len(jobs), desc="generate", unit="img", file=sys.stderr) as bar:
        for start in range(0, len(jobs), cfg.sampling.batch_size):
            batch = jobs[start:start + cfg.sampling.batch_size]
            images = generate_images(pipe, [p.text for p, _ in batch], [s for _, s in batch], cfg.sampling,
                                     dtype=dtype)
            save_images(store, images, prompts=[p.text for p, _ in batch],
                        prompt_ids=[p.prompt_id for p, _ in batch], categories=[p.category for p, _ in batch],
                        seeds=[s for _, s in batch], model_id=model_id, settings=settings,
                        model_key=ref.fingerprint, round=cfg.round, model_fingerprint=ref.fingerprint, run=run)
            added += len(batch)
            bar.update(len(batch))
    return GenerateResult(str(store.root), model_id, ref.fingerprint, run, cfg.round, len(prompts), added,
                          store.read(GENERATIONS).num_rows, sampling)


def _render(cfg: GenerateConfig, store: Store, prompts: list[PromptSpec]) -> GenerateResult:
    if any(p.category == "other" for p in prompts):
        raise UserError("source=renderer draws shapes-world prompts only.",
                        "use shapes-world prompts, or source=pipeline with a model.")
    given = {v for v in (cfg.sampling.height, cfg.sampling.width) if v is not None}
    size = given.pop() if len(given) == 1 else DEFAULT_SIZE
    if given:  # two different sizes
        raise UserError(f"source=renderer draws square images; sampling.height={cfg.sampling.height}, "
                        f"sampling.width={cfg.sampling.width}.",
                        "give one positive size (sampling.height and sampling.width equal), or leave both out.")
    gens = store.to_pandas(GENERATIONS)
    used = gens[gens["model_id"] == "shapes-renderer"].groupby("prompt_id")["seed"].apply(set).to_dict()
    rng = seeds.rng(cfg.seed, seeds.Stream.RENDERER_ROUND, len(gens))
    added = 0
    for spec in tqdm(prompts, desc="render", unit="prompt", file=sys.stderr):
        p = Prompt.parse(spec.text)
        image_seeds = _new_seeds(used.get(spec.prompt_id, set()), cfg.seed, cfg.per_prompt)
        images = []
        for s in image_seeds:
            shown = p
            if rng.random() < cfg.renderer_mismatch_rate:
                shown = perturb(p, p.specified[int(rng.integers(len(p.specified)))], rng)
            images.append(render(shown, s, size))
        n = len(image_seeds)
        save_images(store, images, prompts=[spec.text] * n, prompt_ids=[spec.prompt_id] * n,
                    categories=[spec.category] * n, seeds=image_seeds, model_id="shapes-renderer",
                    settings=RENDERER, round=cfg.round)
        added += n
    return GenerateResult(str(store.root), "shapes-renderer", None, None, cfg.round, len(prompts), added,
                          store.read(GENERATIONS).num_rows, "the shapes-world renderer")
