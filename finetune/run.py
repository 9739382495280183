"""One fine-tuning run's setup, shared by every method: :func:`setup_run` validates the inputs and
loads the reward (its region model too, when the run asks for one) or, for DPO and KTO, which learn
from the raters' labels with no reward, reads and checks those labels and their images
(:func:`finetune.label_data.read_labels`), then prepares the output
folder, loads the model, prompts and optimizer through accelerate and restores the newest
checkpoint; :class:`Run` holds the result, and takes both methods' optimizer steps
(:meth:`Run.gradient_step`, a batch back-propagated in micro-batches, :func:`backward_micro_batches`)."""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.compile import unwrap
from core.errors import UserError
from core.families import pipeline_family, require_finetunable
from core.loading import check_folder, pipeline_geometry
from core.sampling import image_size, latent_shape, pipeline_image_size
from core.schedules import learning_rate
from finetune.checkpoints import latest_checkpoint, prepare_output_dir, save_checkpoint
from finetune.components import Components, load_components, make_accelerator, weight_dtype_for
from finetune.config import LABEL_METHODS, FinetuneConfig
from finetune.label_data import LabelData, read_labels
from finetune.lineage import check_init, lineage, load_init_weights, write_lineage
from finetune.denoiser import TextCond, check_finetune_options, denoiser_for, encode_prompts, make_schedule
from finetune.policy import DiffusionPolicy
from finetune.prompts import check_pretrain_source, check_prompts_fit_model, training_prompts
from finetune.region import keep_regions
from finetune.scheduler import DDIMSchedule, FlowSchedule
from reward.reward_fn import Reward, RewardFn, load_reward


def micro_batches(n: int, size: int | None) -> list[slice]:
    """``n`` rows cut into runs of ``size`` (None: one run of all)."""
    size = size or n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def backward_micro_batches(accelerator, model, parts: list, loss: Callable[[object], tuple[torch.Tensor, object]]
                           ) -> list:
    """Back-propagate one optimizer step's loss in parts (micro-batches): ``loss(part)`` returns the
    part's loss, already scaled by its share of the step's, and a report (detached values) of it;
    the gradients add up to the step's.  Returns the reports, in order.

    Every backward but the last skips the gradient all-reduce of a multi-process run
    (``accelerator.no_sync``), which then happens once, on the summed gradients."""
    reports = []
    for j, part in enumerate(parts):
        with accelerator.no_sync(model) if j < len(parts) - 1 else nullcontext():
            scaled, report = loss(part)
            accelerator.backward(scaled)
        reports.append(report)
    return reports


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_scheduler(optimizer, cfg: FinetuneConfig, num_processes: int) -> torch.optim.lr_scheduler.LambdaLR:
    """optim.warmup_steps of linear warm-up, then optim.lr. accelerate steps a prepared scheduler once
    per process at every optimizer step, so the scheduler's count is divided back to optimizer steps."""
    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(
        s // num_processes, cfg.optimizer_steps, o.warmup_steps, 1.0, "constant"))


@dataclass(frozen=True)
class FinetuneResult:
    """What a DPOK or RWL run returns: its folder, its per-round / per-step rows and metrics.json's content."""

    output_dir: Path
    history: list[dict]
    metrics: dict


@dataclass
class Run:
    cfg: FinetuneConfig
    out: Path
    accelerator: object
    comps: Components
    schedule: DDIMSchedule | FlowSchedule
    policy: DiffusionPolicy
    reward: Reward | None  # None: DPO and KTO, which learn from ``labels``
    prompts: list[str]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    latent_shape: tuple[int, int, int]  # (C, h, w) of the VAE's latents (FLUX's unpacked)
    image_size: tuple[int, int]  # (H, W) pixels of the images sampled and trained on
    lineage: dict | None = None  # where the run comes from (finetune.lineage), also in metrics.json
    labels: LabelData | None = None  # DPO and KTO: their examples and images (finetune.label_data)

    @property
    def device(self):
        return self.accelerator.device

    def keep_regions(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor | None:
        """Region-aware fine-tuning (``region.weight`` > 0): what each image keeps, (B, H, W) bool
        (:func:`finetune.region.keep_regions`); None when the run is not region-aware."""
        return keep_regions(self.reward, images, prompts, self.cfg.region) if self.cfg.region.weight > 0 else None

    def encode_prompts(self, prompts: list[str]) -> tuple[TextCond, TextCond]:
        """(cond, uncond) of ``prompts`` (:func:`finetune.denoiser.encode_prompts`) with the run's
        pipeline, on its device, fed the T5 tokens ``sampling.max_sequence_length`` says."""
        return encode_prompts(self.comps.pipe, prompts, self.device, self.cfg.sampling.max_sequence_length)

    def sampling_policy(self) -> DiffusionPolicy:
        """The policy to sample with now: the trained one, or under ``sampling.compile`` its weights of
        this moment in the process's compiled sampling UNet (:meth:`DiffusionPolicy.for_sampling`),
        ``sampling.batch_size`` images a call.  Call it again after every update."""
        cfg = self.cfg
        rows = cfg.sampling.batch_size * (2 if self.policy.guided else 1)
        return self.policy.for_sampling(cfg.sampling.compile, rows)

    def gradient_step(self, parts: list, loss: Callable[[object], tuple[torch.Tensor, object]]
                      ) -> tuple[list, torch.Tensor | None]:
        """One optimizer step on a batch cut into ``parts``: each part's loss back-propagated in turn
        (:func:`backward_micro_batches`, ``loss`` as there), the gradients clipped to
        ``optim.max_grad_norm``, then the optimizer and learning-rate steps, gradients cleared.
        Returns the parts' reports and the gradient norm before clipping (None on a step that
        only accumulates: under ``optim.grad_accum`` the prepared optimizer and scheduler skip
        the steps that do not synchronise gradients)."""
        acc, unet = self.accelerator, self.comps.unet
        with acc.accumulate(unet):
            reports = backward_micro_batches(acc, unet, parts, loss)
            grad_norm = (acc.clip_grad_norm_(self.comps.trainable, self.cfg.optim.max_grad_norm)
                         if acc.sync_gradients else None)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return reports, grad_norm

    def minibatch_pass(self, n: int, rng: np.random.Generator, names: tuple[str, ...],
                       terms: Callable[[np.ndarray], tuple[torch.Tensor, ...]]) -> dict:
        """One pass over ``n`` items (a DPOK round's transitions, AWM's noised images) in a random
        order, ``dpok.minibatch_size`` items an optimizer step (:meth:`gradient_step`, in
        micro-batches of ``compute.micro_batch`` denoiser rows): ``terms(items)`` gives those items'
        scalar terms, named ``names``, the loss last; each micro-batch's terms are scaled by its
        share of the minibatch, so they add up to the minibatch's.  Returns each term's mean over
        the minibatches and the mean gradient norm (``grad_norm``).  The sums stay on the device
        (float64) until the pass ends, so the loop never waits for the GPU."""
        cfg = self.cfg
        sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        grad_norm = torch.zeros((), dtype=torch.float64, device=self.device)
        n_mb = n_opt = 0
        order = rng.permutation(n)
        for first in range(0, n, cfg.dpok.minibatch_size):
            sel = order[first:first + cfg.dpok.minibatch_size]

            def loss(part: slice, sel=sel) -> tuple[torch.Tensor, torch.Tensor]:
                share = (part.stop - part.start) / len(sel)
                out = terms(sel[part])
                return out[-1] * share, torch.stack([t.detach().double() for t in out]) * share

            reports, norm = self.gradient_step(micro_batches(len(sel), cfg.items_per_pass(self.policy.guided)), loss)
            stats = torch.zeros(len(names), dtype=torch.float64, device=self.device)
            for report in reports:
                stats += report
            if norm is not None:
                grad_norm += norm.double()
                n_opt += 1
            sums += stats
            n_mb += 1
        out = dict(zip(names, (sums / max(1, n_mb)).tolist()))  # the pass's one wait for the device
        out["grad_norm"] = float(grad_norm) / max(1, n_opt)
        return out

    def init_trackers(self, name: str, start: int) -> None:
        """TensorBoard for the steps after ``start`` (the checkpoint resumed from; 0 for a fresh
        run).  Points an earlier process wrote past it, a run killed between checkpoints or the
        run that resume=false starts over from, are purged, so no step shows twice."""
        self.accelerator.init_trackers(name, init_kwargs={"tensorboard": {"purge_step": start + 1}})

    def record_step(self, done: int, row, history: list[dict], checkpoint_every: int, last: int) -> None:
        """After ``done`` of ``last`` optimizer steps (RWL, DPO, KTO): the step's row (a dataclass with
        a ``step`` field) into ``history`` and, every ``log_every`` steps, the trackers (its None
        fields left out); a resumable checkpoint every ``checkpoint_every`` steps (0: none) before the last."""
        fields = asdict(row)
        history.append(fields)
        if done % self.cfg.log_every == 0:
            self.accelerator.log({k: v for k, v in fields.items() if k != "step" and v is not None}, step=done)
        if checkpoint_every and done % checkpoint_every == 0 and done < last:
            save_checkpoint(self.accelerator, self.out, done, self.checkpoint_state(step=done, history=history))

    def checkpoint_state(self, **extra) -> dict:
        return dict(trainable=self.comps.trainable_state(), optimizer=self.optimizer.state_dict(),
                    lr_scheduler=self.lr_scheduler.state_dict(), **extra)

    def restore(self, state: dict) -> None:
        self.comps.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


def _check_inputs(cfg: FinetuneConfig) -> LabelData | None:
    """Fail on missing inputs before anything is written; DPO and KTO: their labels and images, read
    and checked (None for the other methods)."""
    check_folder(Path(cfg.model.pipeline), "model_index.json", "Stable Diffusion pipeline")
    check_finetune_options(cfg, require_finetunable(cfg.model.pipeline))  # what a flow family refuses
    check_prompts_fit_model(cfg)
    height, width = image_size(cfg.sampling.height, cfg.sampling.width, *pipeline_geometry(cfg.model.pipeline))
    if height != width and (cfg.reward.kind == "oracle" or cfg.curve_every):
        raise UserError(f"the shapes-world oracle (reward.kind=oracle, curve_every) judges square images; "
                        f"this run samples {width}x{height}.",
                        "set sampling.height equal to sampling.width, or use a learned reward and curve_every=0.")
    if cfg.method == "rwl":
        check_pretrain_source(cfg, height, width)
    check_init(cfg)
    return read_labels(cfg, (height, width)) if cfg.method in LABEL_METHODS else None


def setup_run(cfg: FinetuneConfig, reward_fn: Reward | RewardFn | None) -> tuple[Run, dict | None]:
    """Validate, load the reward (``reward_fn``, or ``cfg.reward``), prepare the output folder, load
    models and optimizer through accelerate; returns the run and the newest checkpoint's state (None
    when starting fresh).  DPO and KTO take no reward (``reward_fn`` must be None)."""
    labels = _check_inputs(cfg)
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg, out)
    # Loaded once, here, before the output folder is written: a reward that is not there, or one
    # without the region head region.weight > 0 needs, is refused with nothing written.
    region = cfg.region.weight > 0
    if labels is not None:
        reward = None
    elif reward_fn is None:
        reward = load_reward(cfg.reward, accelerator.device, region=region)
    else:
        reward = reward_fn if isinstance(reward_fn, Reward) else Reward(reward_fn, cfg.reward.batch_size)
        if region:
            reward.require_region()
    prepare_output_dir(cfg)
    seed_everything(cfg.seed)
    comps = load_components(cfg, accelerator.device, weight_dtype_for(accelerator))
    if cfg.init is not None:
        # Into the trainable part only (the KL reference stays the base, finetune.lineage); a
        # checkpoint restored below overwrites it, so init counts at step 0 only.
        load_init_weights(unwrap(comps.unet), cfg)
    height, width = pipeline_image_size(comps.pipe, cfg.sampling.height, cfg.sampling.width)
    shape = latent_shape(comps.pipe, height, width)
    schedule = make_schedule(comps.pipe, cfg.sampling, cfg.dpok.noise_level, shape).to(accelerator.device)
    prompts = labels.prompts if labels is not None else training_prompts(cfg)
    record = lineage(cfg, prompts, custom_reward=reward_fn is not None)
    if accelerator.is_main_process:
        write_lineage(out, record)
    optimizer = torch.optim.AdamW(comps.trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    lr_sched = lr_scheduler(optimizer, cfg, accelerator.num_processes)
    unet, optimizer, lr_sched = accelerator.prepare(comps.unet, optimizer, lr_sched)
    comps.unet = unet
    policy = DiffusionPolicy(unet, schedule, cfg.sampling.guidance_scale, comps.reference_unet,
                             denoiser_for(pipeline_family(comps.pipe)))
    run = Run(cfg, out, accelerator, comps, schedule, policy, reward, prompts, optimizer, lr_sched,
              shape, (height, width), record, labels)
    state = latest_checkpoint(out) if cfg.resume else None
    if state is not None:
        run.restore(state)
    return run, state
