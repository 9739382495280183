"""The fine-tuning stage's config: one frozen dataclass, nested by concern.

Its defaults are the shipped shapes-world DPOK run; ``finetune/configs/<method>.yaml`` holds only
what a method or model changes (rwl.yaml: RWL's learning rate; sd15.yaml: Stable Diffusion v1.5's
settings).  Loaded with :func:`core.config.load_config` from such a file plus dotted overrides
(``dpok.kl_weight=0.1``); the resolved config is saved as ``config.yaml`` in the output folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

from core.compile import CompileMode
from core.config import Bounds, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Removed
from core.errors import UserError
from core.sampling import MixedPrecision, SamplingConfig
from finetune.region import RegionConfig
from finetune.rl_math import AdvantageScale, Divergence, RewardWeighting
from reward.reward_fn import RewardSource
from shapes import SHAPES_SD

CONFIGS = Path(__file__).resolve().parent / "configs"  # the shipped config of each method: <method>.yaml
TUNING_LOG = "experiments/dpok-tuning/README.md"  # where each removed option's measurement is written up
VALUE_EPS_MSE_STUDY = "experiments/dpok-value-baseline-eps-mse/README.md"
LOOP_STUDY = "experiments/loop-scarce/README.md (issue 79)"

Method = Literal["dpok", "rwl", "draft", "dpo", "kto"]
METHODS: tuple[str, ...] = get_args(Method)
# the methods that learn from the raters' labels themselves, with no reward model (finetune.preference)
LabelMethod = Literal["dpo", "kto"]
LABEL_METHODS: tuple[str, ...] = get_args(LabelMethod)
# each method's section and the key that says how long its run is (dpok.rounds, rwl.steps, ...)
LENGTH_KEYS = {"dpok": "rounds", "rwl": "steps", "draft": "steps", "dpo": "steps", "kto": "steps"}
Parameterisation = Literal["lora", "full", "side"]
Baseline = Literal["per_prompt", "batch"]
DPOKUpdate = Literal["policy_gradient", "awm"]


@dataclass(frozen=True)
class ModelConfig:
    pipeline: str = str(SHAPES_SD)  # a pipeline folder of a fine-tunable family (core.families)
    parameterisation: Parameterisation = "lora"
    lora_rank: PositiveInt = 4
    lora_alpha: PositiveFloat = 4.0
    # the modules the LoRA adapts; left at this default on an SD3 / FLUX transformer, the family's own
    # (these and the joint attention's add_* projections; finetune.denoiser.lora_targets)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # parameterisation side (DiffCon's side network, core.side): eps = eps_pre + side_strength * g_phi,
    # g_phi a latent UNet side_width times as wide as the backbone, which stays frozen
    side_width: PositiveFloat = 0.25
    side_strength: PositiveFloat = 1.0


@dataclass(frozen=True)
class PromptConfig:
    split: Literal["train", "heldout", "all"] = "train"  # shapes-world prompt set
    prompts_file: str | None = None  # one prompt per line; replaces the shapes-world set
    # prompts of the sample grids; None: the first four of prompts_file (a run on your prompts draws
    # yours, not the shapes world's), without one four shapes-world prompts (finetune.prompts.grid_prompts)
    eval_prompts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class OptimConfig:
    lr: PositiveFloat = 1e-3  # DPOK's; RWL fits every step of its examples and ships 3e-4 (rwl.yaml)
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
    rounds: PositiveInt = 60  # the demo's CPU budget (experiments/dpok-tuning)
    # 4 prompts x 8 samples a round rather than 8 x 4 (the same 32 samples): a per-prompt baseline
    # from 8 samples is less noisy, and a prompt the model sometimes gets right more often has a
    # success among them (experiments/dpok-tuning).
    prompts_per_round: PositiveInt = 4
    samples_per_prompt: PositiveInt = 8
    # The trained window [start, end): DPOK trains denoising steps start .. end - 1 of the
    # sampling.num_inference_steps (0 is the noisiest; end null: to the last step).  The shapes
    # config trains steps 4-7 of the 20: their noise decides count, layout and colour (make
    # probe-steps); a late step's term is nearly all noise and its small sigma makes the PPO ratio
    # swing, and the first 4 decide little (finetune.dpok.draw_transitions, experiments/probe).
    window: tuple[NonNegativeInt, PositiveInt | None] = (4, 8)
    # denoising steps trained per trajectory, a random subset of the window's (here each once)
    steps_per_sample: PositiveInt = 4
    # Finish each training sample after the window with a deterministic DDIM tail of this many UNet
    # calls instead of the stochastic chain, for the reward only (0: the whole chain): after step 7
    # only the reward is needed and a short tail predicts it, and the time saved buys more rounds
    # (finetune.sampler.deterministic_tail, experiments/dpok-tuning).  Evaluation always samples the chain.
    tail_steps: NonNegativeInt = 4
    minibatch_size: PositiveInt = 16  # transitions per forward/backward
    clip_range: PositiveFloat = 0.2
    reward_weight: NonNegativeFloat = 1.0  # alpha of DPOK's objective
    kl_weight: NonNegativeFloat = 0.01  # beta of DPOK's objective: the weight of the divergence below
    # the per-step regulariser to the base model (Diffusion Controller's f-divergences between the
    # two step Gaussians, finetune.rl_math.step_divergence): kl (DPOK's), chi2 or hellinger
    divergence: Divergence = "kl"
    baseline: Baseline = "per_prompt"
    # baseline=per_prompt: divide by each prompt group's reward std (group: DDPO's and GRPO's
    # default) or by the batch's (batch: Dr. GRPO); see finetune.rl_math.normalize_advantages.
    # batch: with few samples a near-tie among wrong images is not blown up to the size of a real
    # success (experiments/dpok-tuning).
    advantage_scale: AdvantageScale = "batch"
    advantage_clip: PositiveFloat = 5.0
    # Flow-matching families (SD3, FLUX): the noise level a of Flow-GRPO's SDE, whose step std is
    # a sqrt(sigma / (1 - sigma)) sqrt(-dt) (Liu et al. 2025 eq. 9; finetune.rl_math.flow_sde_std);
    # 0.7 is Flow-GRPO's.  The SD family's DDIM chain takes sampling.eta instead.
    noise_level: PositiveFloat = 0.7
    # The update phase: DPOK's clipped policy gradient on the window's steps (policy_gradient), or
    # Advantage Weighted Matching (awm; Xue et al. 2025; finetune.awm): the family's pre-training
    # loss at awm_draws fresh noise levels of each round image, weighted by its advantage, plus
    # awm_anchor x the squared change of the prediction from the base model's.  The round (sampling,
    # rewards, advantages) is the same; Flow-Factory ships both.
    update: DPOKUpdate = "policy_gradient"
    awm_draws: PositiveInt = 4
    awm_anchor: NonNegativeFloat = 1.0
    checkpoint_every_rounds: NonNegativeInt = 5  # rounds between resumable checkpoints; 0: none

    REMOVED: ClassVar[dict[str, Removed]] = {
        "prompt_order": Removed("random", f"cycling through the prompts ended lower; {TUNING_LOG}"),
        "shared_prefix_steps": Removed(0, f"branching after a shared prefix gained no more; {TUNING_LOG}"),
        "epochs_per_round": Removed(1, f"two epochs a round gained no more in more time; {TUNING_LOG}"),
        "baseline_history": Removed(0, f"a baseline over past rounds ended lower; {TUNING_LOG}"),
        "baseline=value": Removed(None, f"DPOK's learned value baseline ended lower; {VALUE_EPS_MSE_STUDY}"),
        "value_lr": Removed(1e-3, f"a setting of the removed value baseline; {VALUE_EPS_MSE_STUDY}"),
        "kl_budget": Removed(0.0, "stopping make loop's DPOK runs at a KL budget from the base ended lower and did "
                                  f"not stop rounds falling back; {LOOP_STUDY}"),
        "value_hidden": Removed(256, f"a setting of the removed value baseline; {VALUE_EPS_MSE_STUDY}"),
        "value_steps": Removed(20, f"a setting of the removed value baseline; {VALUE_EPS_MSE_STUDY}"),
        "kl_form": Removed("gaussian", f"DPOK's eps-MSE KL surrogate ended lower than the exact Gaussian KL; {VALUE_EPS_MSE_STUDY}"),
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
    # T of weighting=exp / chi2: the reward lies in [0, 1], and at T = 1 both weightings are nearly
    # uniform (exp(r) spans 1-2.7); 0.25 is what experiments/diffcon measured
    temperature: PositiveFloat = 0.25
    threshold: float = 0.5
    pretrain_weight: NonNegativeFloat = 1.0  # beta of Lee et al. eq. 2
    # Share of D_pre prompts replaced by "" (as in the base model's training): sampling amplifies
    # the unconditional prediction (w - 1)x under classifier-free guidance, so it must stay
    # anchored; below 1, so that the captions are anchored too.
    pretrain_uncond: Annotated[float, Bounds(low=0, high=1, open_high=True)] = 0.1
    # Fit D_model with the guided prediction (sampling.guidance_scale), see finetune.objective.DenoisingObjective.loss.
    guided_loss: bool = True
    steps: PositiveInt = 300
    batch_size: PositiveInt = 32
    checkpoint_every_steps: NonNegativeInt = 500  # optimizer steps between resumable checkpoints; 0: none


@dataclass(frozen=True)
class DRaFTConfig:
    """DRaFT-K (Clark et al. 2024; finetune.draft): the reward's gradient back-propagated through the
    VAE decoder and the last K denoising steps of the sampling chain."""

    # Optimizer steps (before optim.grad_accum).  Also DRaFT's early-stopping rule: the reward keeps
    # rising while the images drift into what only the reward likes (the paper's reward hacking),
    # so a run stops at a fixed step budget rather than at a reward it reaches (docs/finetune.md).
    steps: PositiveInt = 100
    batch_size: PositiveInt = 8  # images an optimizer step, one prompt drawn at random each (per process)
    # K of DRaFT-K: the last K of the sampling.num_inference_steps denoising steps carry the gradient;
    # the steps before them run without one (1: DRaFT-1, the paper's best at its cost)
    backprop_steps: PositiveInt = 1
    checkpoint_every_steps: NonNegativeInt = 25  # optimizer steps between resumable checkpoints; 0: none


@dataclass(frozen=True)
class LabelDataConfig:
    """The labelled round(s) DPO and KTO learn from, read as ``make reward`` reads them (its keys of the
    same names, reward.config.DataConfig): the current answers (undone ones out), gold-check answers out."""

    root: str = "datasets/shapes"  # the dataset root holding generations, binary_labels and rankings
    # which rounds of the closed loop (data.rounds grammar): all, last:N, or a list such as 0,2
    rounds: str = "all"
    # how the binary answers of one image from several raters become one target (data.labels.aggregate_binary):
    # majority (1 / 0, the image dropped on a tie) or mean (the share of raters who said good)
    binary_aggregation: Literal["majority", "mean"] = "majority"


@dataclass(frozen=True)
class DPOConfig:
    """Diffusion-DPO (Wallace et al. 2023; finetune.preference) on the raters' ranking pairs, the
    reference the frozen base model."""

    # beta of eq. 14 in the loss form of the authors' code and diffusers' research project,
    # -log sigmoid(-beta / 2 * ((e_w - e_l) - (e_w_ref - e_l_ref))), e the per-pixel mean squared
    # error (finetune.rl_math.diffusion_dpo_loss).  A larger beta holds the model nearer the base (it
    # is the KL weight of the objective the loss comes from); with the gradient clipped
    # (optim.max_grad_norm) it sets where the loss saturates, not the step size.  250: swept on the
    # shapes demo's round (experiments/label-methods); the paper's 5000 for SD1.5 (full fine-tuning on
    # Pick-a-Pic's 851k pairs; its code's default, diffusers' script's 2500) did not move our LoRA.
    beta: PositiveFloat = 250.0
    # a ranking's tied images: drop (the paper's pairs have a winner) or half (each order with weight
    # 1/2, the 0.5/0.5 target the reward's ranking loss and PickScore train on)
    ties: Literal["drop", "half"] = "drop"
    # also pair every image the raters judged good with every one judged bad of the same prompt
    # (binary_labels, aggregated by data.binary_aggregation)
    binary_pairs: bool = False
    steps: PositiveInt = 300  # optimizer steps (before optim.grad_accum)
    batch_size: PositiveInt = 16  # pairs per step (2 images each, one noise and timestep a pair)
    checkpoint_every_steps: NonNegativeInt = 500  # optimizer steps between resumable checkpoints; 0: none


@dataclass(frozen=True)
class KTOConfig:
    """Diffusion-KTO (Li et al. 2024; finetune.preference) on the raters' binary answers, the reference
    the frozen base model."""

    # beta of the implicit reward beta (e_ref - e) inside the sigmoid utility (finetune.rl_math.diffusion_kto_loss):
    # 250, swept on the shapes demo's round (experiments/label-methods: it gained about twice what the
    # authors' training-script default 1000 did, and 60 broke the model)
    beta: PositiveFloat = 250.0
    desirable_weight: PositiveFloat = 1.0  # lambda_D: weight of an image judged good (the authors' 1)
    undesirable_weight: PositiveFloat = 1.0  # lambda_U: weight of an image judged bad (the authors' 1)
    steps: PositiveInt = 300  # optimizer steps (before optim.grad_accum)
    batch_size: PositiveInt = 32  # images per step; the reference point is their batch's (eq. 8)
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
    # sampling.compile here: the rounds' trajectories, RWL's D_model, the curve and the sample
    # grids go through the process's compiled plain UNet (core.compile.sampling_unet) with the
    # policy's weights, its LoRA fused; the update is compute.compile's
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dpok: DPOKConfig = field(default_factory=DPOKConfig)
    rwl: RWLConfig = field(default_factory=RWLConfig)
    draft: DRaFTConfig = field(default_factory=DRaFTConfig)
    data: LabelDataConfig = field(default_factory=LabelDataConfig)  # dpo / kto: the labels they learn from
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    # region-aware fine-tuning (Focus-N-Fix, finetune.region): region.weight > 0 charges DPOK's samples
    # their change from the base model's image of the same noise outside the problem region the
    # reward's region head marks; RWL holds its predictions to the base model's there; DRaFT
    # back-propagates that change's gradient onto the pixels it protects
    region: RegionConfig = field(default_factory=RegionConfig)

    @property
    def dpok_window(self) -> tuple[int, int]:
        """The denoising steps DPOK trains, [start, end): dpok.window, end null made concrete."""
        start, end = self.dpok.window
        return start, self.sampling.num_inference_steps if end is None else end

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run in one process: DPOK's rounds x minibatches of
        prompts_per_round x samples_per_prompt x steps_per_sample transitions, or the other methods'
        steps, each divided by optim.grad_accum."""
        if self.method == "dpok":
            d = self.dpok
            transitions = d.prompts_per_round * d.samples_per_prompt * d.steps_per_sample
            micro = d.rounds * math.ceil(transitions / d.minibatch_size)
        else:
            micro = self.length[1]
        return max(1, micro // self.optim.grad_accum)

    @property
    def length(self) -> tuple[str, int]:
        """The key that says how long the run is, and its value: dpok.rounds or <method>.steps
        (what a resumed run may raise, and where a checkpoint's count is compared)."""
        key = LENGTH_KEYS[self.method]
        return f"{self.method}.{key}", getattr(getattr(self, self.method), key)

    def items_per_pass(self, guided: bool) -> int | None:
        """Transitions or examples per UNet pass under ``compute.micro_batch`` rows (a guided one
        takes 2); None: all at once."""
        rows = self.compute.micro_batch
        return None if rows is None else max(1, rows // 2 if guided else rows)

    @property
    def out(self) -> str:
        return self.output_dir or f"runs/finetune-{self.method}"

    def __post_init__(self):  # what the field types cannot say; fails when the config loads
        if self.sampling.scheduler != "ddim":
            raise UserError(
                f"sampling.scheduler={self.sampling.scheduler}: fine-tuning samples the DDIM chain (its "
                "log-probabilities and updates are DDIM's), whatever the folder's own scheduler.",
                "leave sampling.scheduler out (ddim); the pipeline's own scheduler is for make generate "
                "and make eval.")
        if self.method == "draft":
            self._check_draft()
        if self.method in LABEL_METHODS and self.region.weight > 0:
            raise UserError(f"method={self.method} learns from the raters' labels with no reward model, and "
                            f"region-aware fine-tuning (region.weight={self.region.weight:g}) needs a reward's "
                            "region head.",
                            "set region.weight=0, or use METHOD=dpok / rwl / draft with a learned reward.")
        if self.method != "dpok":
            return
        if self.sampling.eta <= 0:
            raise UserError(
                "DPOK needs stochastic sampling, but sampling.eta is 0: every DDIM step is then "
                "deterministic and has no log-probability to take a policy gradient of.",
                "set sampling.eta > 0 (1.0 is DPOK's setting).")
        (start, end), n = self.dpok_window, self.sampling.num_inference_steps
        if not start < end <= n:
            raise UserError(f"dpok.window=[{start}, {end}) is not a window of the steps 0..{n - 1} "
                            f"(sampling.num_inference_steps={n}).",
                            f"set dpok.window=[start, end] with start < end <= {n}, or [0, null] for every step.")
        if self.dpok.steps_per_sample > end - start:
            raise UserError(f"dpok.steps_per_sample={self.dpok.steps_per_sample} is more than the {end - start} "
                            f"steps of dpok.window=[{start}, {end}).",
                            "train at most every step of the window once per sample, or widen dpok.window.")
        if self.dpok.tail_steps > n - end:
            raise UserError(f"dpok.tail_steps={self.dpok.tail_steps} is more than the {n - end} denoising steps "
                            f"after dpok.window=[{start}, {end}).",
                            f"set dpok.tail_steps to at most {n - end}, or 0 for the whole stochastic chain.")

    def _check_draft(self) -> None:
        if self.reward.kind == "oracle":
            raise UserError("method=draft back-propagates the reward's gradient into the model, but the shapes "
                            "oracle (reward.kind=oracle) judges rendered pixels by rules: it has no gradient.",
                            "use a learned reward (reward.kind=learned, reward.path=<make reward folder>), or "
                            "METHOD=dpok for the oracle.")
        k, n = self.draft.backprop_steps, self.sampling.num_inference_steps
        if k > n:
            raise UserError(f"draft.backprop_steps={k} is more than the {n} denoising steps of the chain "
                            f"(sampling.num_inference_steps={n}).",
                            f"set draft.backprop_steps to at most {n} (1 is DRaFT-1).")
