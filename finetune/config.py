"""The fine-tuning stage's config: one frozen dataclass, nested by concern.

Loaded with :func:`core.config.load_config` from ``finetune/configs/<method>.yaml`` plus dotted
overrides (``dpok.kl_weight=0.1``); the resolved config is saved as ``config.yaml`` in the output
folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from core.compile import CompileMode
from core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Removed
from core.errors import UserError
from core.sampling import MixedPrecision
from finetune.rl_math import AdvantageScale, RewardWeighting
from reward.reward_fn import RewardSource
from shapes import SHAPES_SD

CONFIGS = Path(__file__).resolve().parent / "configs"  # the shipped config of each method: <method>.yaml
TUNING_LOG = "experiments/dpok-tuning/README.md"  # where each removed option's measurement is written up
ISSUE_46 = "experiments/issue-46-value-eps-mse/README.md"

Method = Literal["dpok", "rwl"]
Parameterisation = Literal["lora", "full"]
Baseline = Literal["per_prompt", "batch"]


@dataclass(frozen=True)
class ModelConfig:
    pipeline: str = str(SHAPES_SD)  # a StableDiffusionPipeline folder
    parameterisation: Parameterisation = "lora"
    lora_rank: PositiveInt = 4
    lora_alpha: PositiveFloat = 4.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class PolicySamplingConfig:
    num_inference_steps: PositiveInt = 20  # DDIM steps (the name make generate and make eval use too)
    eta: NonNegativeFloat = 1.0  # DDIM eta; > 0 makes each step a Gaussian with a log-prob
    guidance_scale: float = 5.0  # the shapes model samples best at 5 (with eta 1)
    # pixels, multiples of the VAE scale factor and 8; None: the UNet's native size
    # (sample_size * VAE factor); see core.sampling.image_size
    height: PositiveInt | None = None
    width: PositiveInt | None = None
    # torch.compile of the sampling passes (the rounds' trajectories, RWL's D_model, the curve and
    # the sample grids): the policy's weights, its LoRA fused, go through the process's compiled
    # plain UNet (core.compile.sampling_unet), the same module make generate and make eval use; the
    # update is compute.compile's.  auto as make generate's sampling.compile (core.sampling).
    compile: CompileMode = "auto"
    # images per compiled UNet call (x2 rows when guided): a call of more is split, of fewer padded;
    # make generate's and make eval's sampling.batch_size, so that one compiled graph serves them all
    batch_size: PositiveInt = 32


@dataclass(frozen=True)
class PromptConfig:
    split: Literal["train", "heldout", "all"] = "train"  # shapes-world prompt set
    prompts_file: str | None = None  # one prompt per line; replaces the shapes-world set
    eval_prompts: tuple[str, ...] = (
        "one red circle", "two blue squares on a white background", "three yellow circles",
        "four green squares on a gray background",
    )


@dataclass(frozen=True)
class OptimConfig:
    lr: PositiveFloat = 3e-4
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: PositiveFloat = 1.0
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    warmup_steps: NonNegativeInt = 0  # optimizer steps of linear warm-up, then constant

    REMOVED: ClassVar[dict[str, Removed]] = {
        "lr_schedule": Removed("constant", f"a cosine decay ended lower or no higher; {TUNING_LOG}"),
        "lr_floor": Removed(0.05, f"the floor of the removed cosine schedule; {TUNING_LOG}"),
        "ema_decay": Removed(0.0, f"a weight average ended no higher; {TUNING_LOG}"),
    }


@dataclass(frozen=True)
class DPOKConfig:
    rounds: PositiveInt = 20
    prompts_per_round: PositiveInt = 8
    samples_per_prompt: PositiveInt = 4
    steps_per_sample: int = 10  # denoising steps trained per trajectory (random subset), <= sampling.num_inference_steps
    # Draw those steps from the first `early_steps` (noisiest) denoising steps only (None: from
    # all); why: finetune.dpok.draw_transitions.
    early_steps: int | None = None
    # Skip the `start_step` noisiest steps too: train steps start_step .. early_steps - 1 (0: from
    # the first).  Why: finetune.dpok.draw_transitions.
    start_step: int = 0
    # Finish each training sample after the trained steps (early_steps) with a deterministic DDIM
    # tail of this many UNet calls instead of the stochastic chain, for the reward only (0: the
    # whole chain); why: finetune.sampler.deterministic_tail.  Evaluation always samples the chain.
    tail_steps: int = 0
    minibatch_size: PositiveInt = 32  # transitions per forward/backward
    clip_range: PositiveFloat = 0.2
    reward_weight: NonNegativeFloat = 1.0  # alpha of DPOK's objective
    kl_weight: float = 0.01  # beta of DPOK's objective
    baseline: Baseline = "per_prompt"
    # baseline=per_prompt: divide by each prompt group's reward std (group: DDPO's and GRPO's
    # default) or by the batch's (batch: Dr. GRPO); see finetune.rl_math.normalize_advantages.
    advantage_scale: AdvantageScale = "batch"
    advantage_clip: PositiveFloat = 5.0
    checkpoint_every_rounds: NonNegativeInt = 5  # rounds between resumable checkpoints; 0: none

    REMOVED: ClassVar[dict[str, Removed]] = {
        "prompt_order": Removed("random", f"cycling through the prompts ended lower; {TUNING_LOG}"),
        "shared_prefix_steps": Removed(0, f"branching after a shared prefix gained no more; {TUNING_LOG}"),
        "epochs_per_round": Removed(1, f"two epochs a round gained no more in more time; {TUNING_LOG}"),
        "baseline_history": Removed(0, f"a baseline over past rounds ended lower; {TUNING_LOG}"),
        "baseline=value": Removed(None, f"DPOK's learned value baseline ended lower; {ISSUE_46}"),
        "value_lr": Removed(1e-3, f"a setting of the removed value baseline; {ISSUE_46}"),
        "value_hidden": Removed(256, f"a setting of the removed value baseline; {ISSUE_46}"),
        "value_steps": Removed(20, f"a setting of the removed value baseline; {ISSUE_46}"),
        "kl_form": Removed("gaussian", f"DPOK's eps-MSE KL surrogate ended lower than the exact Gaussian KL; {ISSUE_46}"),
    }

    def prompts_per_process(self, processes: int) -> int:
        """Prompts each of ``processes`` processes samples a round: the round's prompts split
        between them, at least one each."""
        return max(1, self.prompts_per_round // processes)


@dataclass(frozen=True)
class RWLConfig:
    samples_per_prompt: PositiveInt = 8  # generated images per prompt for D_model
    include_labeled_good: bool = False  # also add images raters labelled good (dataset root)
    dataset_root: str = "datasets/shapes"
    # "shapes": renders of the train prompts (the base model's own training data), or a dataset root
    pretrain_source: str = "shapes"
    pretrain_per_prompt: PositiveInt = 8
    weighting: RewardWeighting = "reward"
    temperature: PositiveFloat = 1.0
    threshold: float = 0.5
    pretrain_weight: float = 1.0  # beta of Lee et al. eq. 2
    # Share of D_pre prompts replaced by "" (as in the base model's training): sampling amplifies
    # the unconditional prediction (w - 1)x under classifier-free guidance, so it must stay anchored.
    pretrain_uncond: float = 0.1
    # Fit D_model with the guided prediction (sampling.guidance_scale), see rwl.denoising_loss.
    guided_loss: bool = True
    steps: PositiveInt = 300
    batch_size: PositiveInt = 32
    checkpoint_every_steps: NonNegativeInt = 500  # optimizer steps between resumable checkpoints; 0: none


@dataclass(frozen=True)
class ComputeConfig:
    """How the passes run, not what they compute: a run may resume with other values here."""

    # torch.compile of the trained UNet as one graph (core.compile), for sampling and the update
    # alike; the first pass of each kind and batch shape compiles.  auto: on CUDA, off elsewhere
    # (on the CPU a compile costs more than short runs save, and the demo's DPOK and RWL stages
    # were no faster even over a filled compile cache: experiments/bench, experiments/demo-budget).
    compile: CompileMode = "auto"
    # UNet rows per forward/backward pass inside one DPOK minibatch or RWL batch (a guided
    # transition or example is 2 rows, an unguided one 1): each part's loss, scaled by its share,
    # is back-propagated in turn and the gradients add up, so the optimizer takes the same step at
    # a lower peak memory.  None: the whole minibatch/batch in one pass.
    micro_batch: PositiveInt | None = None
    # Recompute the UNet blocks' activations in the backward pass instead of keeping them
    # (diffusers' enable_gradient_checkpointing): less memory, about one more forward of time.
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    method: Method = "dpok"
    output_dir: str | None = None  # default runs/finetune-<method>
    overwrite: bool = False  # refuse to write into a folder that already holds a result
    seed: int = 0
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    resume: bool = True  # continue from the newest checkpoint in output_dir if there is one
    # A finished fine-tuning run folder to start from (its LoRA adapter or full UNet; the closed
    # loop's previous round): same base model.pipeline and model settings; the KL term stays
    # anchored to the base, not to init (finetune.lineage).  A checkpoint to resume from wins.
    init: str | None = None
    log_every: PositiveInt = 1
    sample_grid_every: NonNegativeInt = 5  # rounds; 0 disables the TensorBoard/PNG sample grids
    # DPOK, shapes world: every N rounds (and before the first), the share of the current policy's
    # samples the oracle judges aligned, on every training prompt x curve_samples fixed seeds: a
    # learning curve from an independent judge (finetune.dpok.curve_alignment).  0: off.
    curve_every: NonNegativeInt = 0
    curve_samples: PositiveInt = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardSource = field(default_factory=RewardSource)
    sampling: PolicySamplingConfig = field(default_factory=PolicySamplingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dpok: DPOKConfig = field(default_factory=DPOKConfig)
    rwl: RWLConfig = field(default_factory=RWLConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    @property
    def dpok_eligible_steps(self) -> int:
        """How many of the noisiest denoising steps DPOK trains on (dpok.early_steps, or all)."""
        return self.sampling.num_inference_steps if self.dpok.early_steps is None else self.dpok.early_steps

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run in one process: DPOK's rounds x minibatches of
        prompts_per_round x samples_per_prompt x steps_per_sample transitions, or RWL's steps, each
        divided by optim.grad_accum."""
        if self.method == "rwl":
            micro = self.rwl.steps
        else:
            d = self.dpok
            transitions = d.prompts_per_round * d.samples_per_prompt * d.steps_per_sample
            micro = d.rounds * math.ceil(transitions / d.minibatch_size)
        return max(1, micro // self.optim.grad_accum)

    def items_per_pass(self, guided: bool) -> int | None:
        """Transitions or examples per UNet pass under ``compute.micro_batch`` rows (a guided one
        takes 2); None: all at once."""
        rows = self.compute.micro_batch
        return None if rows is None else max(1, rows // 2 if guided else rows)

    @property
    def out(self) -> str:
        return self.output_dir or f"runs/finetune-{self.method}"

    def __post_init__(self):  # bad values fail when the config loads, before anything runs
        if self.method == "dpok" and self.sampling.eta <= 0:
            raise UserError(
                "DPOK needs stochastic sampling, but sampling.eta is 0: every DDIM step is then "
                "deterministic and has no log-probability to take a policy gradient of.",
                "set sampling.eta > 0 (1.0 is DPOK's setting).")
        pool = self.dpok_eligible_steps
        if self.method == "dpok" and not 1 <= pool <= self.sampling.num_inference_steps:
            raise UserError(f"dpok.early_steps={self.dpok.early_steps} is not in 1..sampling.num_inference_steps="
                            f"{self.sampling.num_inference_steps}.", "set it to at most sampling.num_inference_steps, or null for all.")
        if self.method == "dpok" and not 0 <= self.dpok.start_step < pool:
            raise UserError(f"dpok.start_step={self.dpok.start_step} is not in 0..{pool - 1} (below dpok.early_steps, "
                            "or sampling.num_inference_steps).", "set it below the last trained step, or 0.")
        if self.method == "dpok" and not 1 <= self.dpok.steps_per_sample <= pool - self.dpok.start_step:
            raise UserError(f"dpok.steps_per_sample={self.dpok.steps_per_sample} is not in "
                            f"1..{pool - self.dpok.start_step} (the steps dpok.start_step..dpok.early_steps - 1, "
                            "or to sampling.num_inference_steps).",
                            "train at most every eligible denoising step once per sample.")
        tail_room = self.sampling.num_inference_steps - pool
        if self.method == "dpok" and not 0 <= self.dpok.tail_steps <= tail_room:
            raise UserError(f"dpok.tail_steps={self.dpok.tail_steps} is not in 0..{tail_room} (the denoising steps "
                            "after dpok.early_steps).",
                            "set dpok.early_steps below sampling.num_inference_steps and dpok.tail_steps to at most "
                            "the steps after it, or 0 for the whole stochastic chain.")
        for name, value in (("optim.lr", self.optim.lr), ("dpok.clip_range", self.dpok.clip_range)):
            if value <= 0:
                raise UserError(f"{name}={value} must be > 0.", f"set {name} to a positive number.")
        if self.dpok.kl_weight < 0 or self.rwl.pretrain_weight < 0:
            raise UserError("KL / pre-training weights must be >= 0.", "set them to 0 or more.")
        if not 0 <= self.rwl.pretrain_uncond < 1:
            raise UserError(f"rwl.pretrain_uncond={self.rwl.pretrain_uncond} is not a share in [0, 1).",
                            "set it to e.g. 0.1 (the base model's caption dropout), or 0 to turn it off.")
