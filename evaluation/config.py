"""``make eval``'s config (:class:`EvalConfig`): which models, prompts, seeds and sampling.  Its
defaults name the shipped shapes-world models; the evaluation itself (:mod:`evaluation.compare`)
reads the shapes world only through :mod:`evaluation.oracle`."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import PositiveFloat, PositiveInt, Share
from core.sampling import MixedPrecision, SamplingConfig
from reward.reward_fn import RewardSource
from shapes import SHAPES_CLIP, SHAPES_SD


@dataclass(frozen=True)
class EvalConfig:
    base: str = str(SHAPES_SD)  # a pipeline folder or a fine-tuned run (core.loading.resolve_model)
    # name=path of a fine-tuned run (LoRA weights or a full pipeline folder); one that is not there
    # is an error.  name=path@s: a LoRA or side-network run with what it learned scaled by s at load
    # (core.loading.with_scale; e.g. dpok25=runs/finetune-dpok@0.25)
    models: tuple[str, ...] = ("dpok=runs/finetune-dpok", "rwl=runs/finetune-rwl")
    # the model (a name among models) whose scaled points are the frontier every model's broken
    # share is read against (evaluation.frontier); None: "dpok" when it is among models
    frontier: str | None = None
    # the scales the frontier model is also evaluated at, each one more model named <frontier>@<s>;
    # the smallest is the floor.  (): no frontier (unless models name the run at several scales)
    frontier_scales: tuple[PositiveFloat, ...] = ()
    # further DDIM etas the target prompts are sampled at for the keep table, on the same seeds
    # (e.g. [0.0]: the deterministic sampler); (): sampling.eta alone
    keep_etas: tuple[Share, ...] = ()
    # the strength lambda of every side-network run among the models (core.side); None: each one's own
    side_strength: PositiveFloat | None = None
    split: str = "heldout"  # shapes-world prompt set evaluated (the fine-tuning targets)
    prompts_file: str | None = None  # any prompts, one per line: evaluated instead of `split`
    # shapes-world prompts never fine-tuned on, reported as generalisation (minus any evaluated
    # prompt); None: none
    generalization_split: str | None = None
    # shapes-world prompts only: also evaluate control prompts (train prompts with one or two objects)
    control_split: bool = True
    # a folder of images (any size; sub-folders too): the fidelity reference.  None: renders of the
    # prompts (shapes-world prompts) or the base model's samples (any other prompts)
    reference_images: str | None = None
    samples_per_prompt: PositiveInt = 4  # fresh seeds per evaluated (target) prompt: the headline figure
    # fresh seeds per control and generalisation prompt; None: samples_per_prompt
    side_samples_per_prompt: PositiveInt | None = None
    seed: int = 1234
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # autocast dtype of the sampling, the same for every model (core.sampling.sampling_dtype); auto:
    # bf16 on a CUDA GPU that has it, else fp32 ("no"), as for fine-tuning
    mixed_precision: MixedPrecision = "auto"
    reward: RewardSource = field(default_factory=RewardSource)
    clip: str = str(SHAPES_CLIP)  # CLIP folder for the fidelity proxy
    output_dir: str = "reports/eval"
    grid_prompts: PositiveInt = 8  # prompts shown in the before/after grids
    grid_samples: PositiveInt = 8  # seeds shown per prompt in the grids (at most samples_per_prompt)
