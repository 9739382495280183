"""The adapters from a diffusers scheduler to the pure functions of :mod:`finetune.rl_math`: one
schedule per sampler kind (:class:`DDIMSchedule` for the SD family, :class:`FlowSchedule` for the
flow-matching families), each with ``timesteps`` (the denoiser's time input per step),
``step(output, x, index)`` (the stochastic step's Gaussian) and ``ode_step`` (the deterministic
step a tail takes).

The SD policy samples with DDIM (eta > 0 makes every step a Gaussian with a log-prob).  Any scheduler
config of a Stable Diffusion folder (DDIM, PNDM, Euler, DPM-Solver, ...) carries the model's noise
schedule, so the adapter rebuilds it as a ``DDIMScheduler`` (:func:`ddim_scheduler`, the one plain
sampling uses too: :func:`core.sampling.ddim_scheduler`) and reads off,
for each inference step, the timestep and the alpha-bars either side of it, with exactly the
indexing of ``DDIMScheduler.step``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from core.errors import UserError
from core.sampling import ddim_scheduler as sampling_ddim
from finetune.rl_math import PredictionType, StepGaussian, ddim_sigma, ddim_step, flow_ode_step, flow_sde_step

log = logging.getLogger(__name__)

_said: set[str] = set()  # notes already logged by this process


def ddim_scheduler(scheduler):
    """:func:`core.sampling.ddim_scheduler` (the DDIM every stage samples with by default), refused
    where its step is not a Gaussian: a DDIM config that clips or thresholds the predicted x0."""
    ddim, note = sampling_ddim(scheduler)
    if ddim.config.get("thresholding", False) or ddim.config.get("clip_sample", False):
        raise UserError(
            "the pipeline's scheduler clips or thresholds the predicted x0, which makes the DDIM "
            "step non-Gaussian.",
            "set clip_sample=false and thresholding=false in scheduler/scheduler_config.json "
            "(Stable Diffusion's own config has both false).")
    return ddim, note


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step constants of a DDIM sampling schedule; all tensors have shape (T,)."""

    timesteps: torch.Tensor  # long, descending, e.g. 999, 949, ..., 49 (trailing spacing)
    abar: torch.Tensor  # alpha-bar at timesteps[i]
    abar_prev: torch.Tensor  # alpha-bar at the step the DDIM update lands on
    eta: float
    prediction_type: PredictionType
    init_noise_sigma: float

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def sigma(self) -> torch.Tensor:
        return ddim_sigma(self.abar, self.abar_prev, self.eta)

    def step(self, model_output: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor) -> StepGaussian:
        """p(x_{t-1} | x_t) for samples at step indices ``index`` (B,) (they may differ per sample)."""
        index = index.to(self.abar.device)
        return ddim_step(model_output.float(), x_t.float(), self.abar[index].to(x_t.device),
                         self.abar_prev[index].to(x_t.device), self.eta, self.prediction_type)

    def ode_step(self, model_output: torch.Tensor, x: torch.Tensor, index: int, to: int | None) -> torch.Tensor:
        """x after a deterministic DDIM step (eta = 0, DDIM eq. 12) from step ``index`` to the
        alpha-bar of step ``to``'s timestep (None: the chain's final one); a deterministic tail's
        step (:func:`finetune.sampler.deterministic_tail`)."""
        abar_to = self.abar[to] if to is not None else self.abar_prev[-1]
        return ddim_step(model_output.float(), x.float(), self.abar[index].to(x.device), abar_to.to(x.device), 0.0,
                         self.prediction_type).mean

    def to(self, device) -> "DDIMSchedule":
        return DDIMSchedule(self.timesteps.to(device), self.abar.to(device), self.abar_prev.to(device),
                            self.eta, self.prediction_type, self.init_noise_sigma)

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int, eta: float) -> "DDIMSchedule":
        ddim, note = ddim_scheduler(scheduler)
        if note is not None and note not in _said:  # once per process, however many runs it makes
            _said.add(note)
            log.warning(note)
        ddim.set_timesteps(num_inference_steps)
        timesteps = ddim.timesteps.clone().long()
        prev = timesteps - ddim.config.num_train_timesteps // ddim.num_inference_steps
        abar_all = ddim.alphas_cumprod.double()
        abar = abar_all[timesteps]
        final = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
        abar_prev = torch.where(prev >= 0, abar_all[prev.clamp_min(0)], final)
        schedule = cls(timesteps, abar.float(), abar_prev.float(), float(eta),
                       ddim.config.prediction_type, float(ddim.init_noise_sigma))
        if eta > 0 and bool((schedule.sigma <= 0).any()):
            bad = timesteps[schedule.sigma <= 0].tolist()
            raise UserError(
                f"DDIM steps at timesteps {bad} are deterministic (sigma = 0), so they have no "
                "log-probability.",
                "set set_alpha_to_one=false in the scheduler config (as Stable Diffusion does)."
                if ddim.config.set_alpha_to_one else
                "end the schedule above t=0: set timestep_spacing=\"trailing\", or \"leading\" with "
                "steps_offset=1 (Stable Diffusion's), in the scheduler config.")
        return schedule


@dataclass(frozen=True)
class FlowSchedule:
    """The noise levels of a flow-matching folder's sampling (SD3, FLUX) and Flow-GRPO's SDE step
    on them (Liu et al. 2025, arXiv 2505.05470, eq. 9-10; :func:`finetune.rl_math.flow_sde_step`).

    ``sigmas`` are exactly the levels the folder's ``FlowMatchEulerDiscreteScheduler`` steps through
    in the family's pipeline for this step count and image size: its shift (SD3), or FLUX's
    dynamic shift ``mu`` from the image's token count and FluxPipeline's linspace sigmas
    (:meth:`from_scheduler`).  Step i goes from sigmas[i] to sigmas[i + 1] (dt < 0)."""

    timesteps: torch.Tensor  # (T,) float: sigma * 1000 per step, the scheduler's timesteps (SD3's time input)
    sigmas: torch.Tensor  # (T + 1,) float: 1 (pure noise) ... 0 (the image)
    noise_level: float  # Flow-GRPO's a (dpok.noise_level); 0 is the ODE
    init_noise_sigma: float = 1.0  # x_1 ~ N(0, I): sigma = 1 is pure noise

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def step(self, velocity: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> StepGaussian:
        """Flow-GRPO's SDE step p(x' | x) at step indices ``index`` (B,), velocity and x (B, C, h, w)."""
        index = index.to(self.sigmas.device)
        sigma, sigma_next = self.sigmas[index].to(x.device), self.sigmas[index + 1].to(x.device)
        return flow_sde_step(velocity.float(), x.float(), sigma, sigma_next, self.noise_level)

    def ode_step(self, velocity: torch.Tensor, x: torch.Tensor, index: int, to: int | None) -> torch.Tensor:
        """The ODE's Euler step from step ``index``'s level to step ``to``'s (None: to sigma = 0)."""
        sigma_to = self.sigmas[to] if to is not None else self.sigmas[-1]
        return flow_ode_step(velocity.float(), x.float(), self.sigmas[index].to(x.device), sigma_to.to(x.device))

    def to(self, device) -> "FlowSchedule":
        return FlowSchedule(self.timesteps.to(device), self.sigmas.to(device), self.noise_level, self.init_noise_sigma)

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int, noise_level: float, image_tokens: int,
                       linspace_sigmas: bool) -> "FlowSchedule":
        """The schedule a pipeline sets for ``num_inference_steps`` on a copy of ``scheduler``:
        ``image_tokens`` (the denoiser's tokens per image) gives a dynamic-shift config its ``mu``
        (diffusers' ``calculate_shift``, as both pipelines compute it); ``linspace_sigmas``: pass
        FluxPipeline's sigmas ``linspace(1, 1 / n, n)`` (SD3's pipeline passes none)."""
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        flow = type(scheduler).from_config(scheduler.config)
        cfg, kwargs = flow.config, {}
        if cfg.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(image_tokens, cfg.get("base_image_seq_len", 256),
                                           cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                           cfg.get("max_shift", 1.15))
        if linspace_sigmas and not cfg.get("use_flow_sigmas", False):
            kwargs["sigmas"] = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        else:
            kwargs["num_inference_steps"] = num_inference_steps
        flow.set_timesteps(**kwargs)
        return cls(flow.timesteps.float().cpu(), flow.sigmas.float().cpu(), float(noise_level))
