"""The one adapter from a diffusers scheduler to the pure functions of :mod:`finetune.rl_math`.

The policy samples with DDIM (eta > 0 makes every step a Gaussian with a log-prob).  Any scheduler
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
from finetune.rl_math import PredictionType, StepGaussian, ddim_sigma, ddim_step

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
