"""The diffusion model as a policy: one denoiser call -> the Gaussian of one denoising step.

Sampling (with log-probs), the policy-gradient update, the KL reference and reward-weighted
likelihood all go through :meth:`DiffusionPolicy.step` / :meth:`DiffusionPolicy.model_output`,
so the log-prob is computed by one piece of code.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from core.compile import CompileMode, resolve_compile, sampling_unet, unwrap
from core.families import SD
from core.side import is_side
from finetune.denoiser import Denoiser, TextCond, denoiser_for
from finetune.rl_math import StepGaussian
from finetune.scheduler import DDIMSchedule, FlowSchedule


@dataclass(frozen=True)
class PolicyStep:
    gaussian: StepGaussian  # p(x_{t-1} | x_t), mean (B, C, H, W) fp32
    # a side-network policy (core.side): the frozen backbone's outputs at this step, (R, C, H, W) with
    # R = 2B rows [uncond; cond] under guidance, else B; None for any other policy
    eps_pre: torch.Tensor | None = None


class DiffusionPolicy:
    """A denoiser (SD's UNet, SD3's or FLUX's transformer: :mod:`finetune.denoiser`) with its family's
    guidance over a schedule (:class:`finetune.scheduler.DDIMSchedule`, or ``FlowSchedule``'s SDE).

    ``reference_unet``: the frozen base model for the KL term.  None means the denoiser carries a
    PEFT (LoRA) adapter and the reference is the same model with the adapter disabled, or is a
    :class:`core.side.SideUNet` whose frozen backbone is the reference: no second copy in memory.
    ``denoiser``: the family's call (default: SD's UNet call).
    """

    def __init__(self, unet, schedule: DDIMSchedule | FlowSchedule, guidance_scale: float, reference_unet=None,
                 denoiser: Denoiser | None = None):
        self.unet = unet
        self.schedule = schedule
        self.guidance_scale = guidance_scale
        self.reference_unet = reference_unet
        self.denoiser = denoiser or denoiser_for(SD)

    @property
    def guided(self) -> bool:
        """Whether a step runs an unconditional and a conditional pass (classifier-free guidance)."""
        return self.denoiser.guided(self.guidance_scale)

    def _like(self, unet) -> DiffusionPolicy:
        """This policy's schedule, guidance and family on another denoiser, without a reference."""
        return DiffusionPolicy(unet, self.schedule, self.guidance_scale, denoiser=self.denoiser)

    def model_output(self, unet, x_t: torch.Tensor, index: torch.Tensor, cond: TextCond,
                     uncond: TextCond) -> torch.Tensor:
        """Guided denoiser output at step indices ``index`` (B,): u + g (c - u) (or the family's
        one distilled pass), in fp32.

        x_t (B, C, H, W); cond / uncond the prompts' and the empty prompt's text conditioning.
        Without classifier-free guidance the unconditional pass is skipped."""
        return self._outputs(unet, x_t, index, cond, uncond)[0]

    def _outputs(self, unet, x_t, index, cond, uncond, eps_pre=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(guided output (B, C, H, W) fp32, a side network's backbone outputs (PolicyStep.eps_pre)
        or None).  ``eps_pre``: those outputs already known, for a side network, which then runs alone."""
        t = self.schedule.timesteps.to(x_t.device)[index]
        guided = self.guided
        x, t, text = (torch.cat([x_t, x_t]), torch.cat([t, t]), TextCond.cat([uncond, cond])) if guided else (x_t, t, cond)
        out, pre = self.denoiser(unet, x, t, text, self.guidance_scale, eps_pre)
        return self.guide(out), pre

    def guide(self, out: torch.Tensor) -> torch.Tensor:
        """Rows [uncond; cond] (2B, ...) -> u + g (c - u) (B, ...); without guidance ``out`` itself."""
        if not self.guided:
            return out
        u, c = out.chunk(2)
        return u + self.guidance_scale * (c - u)

    def _step(self, unet, x_t, index, cond, uncond, eps_pre=None) -> PolicyStep:
        out, pre = self._outputs(unet, x_t, index, cond, uncond, eps_pre)
        return PolicyStep(self.schedule.step(out, x_t, index), pre)

    def step(self, x_t, index, cond, uncond, eps_pre: torch.Tensor | None = None) -> PolicyStep:
        """The policy's step; ``eps_pre``: a side network's backbone outputs at these rows (recorded
        while sampling), so that only the side network runs."""
        return self._step(self.unet, x_t, index, cond, uncond, eps_pre)

    def for_sampling(self, compile: CompileMode, rows: int) -> DiffusionPolicy:
        """The policy to sample with: itself, or where ``compile`` says so
        (:func:`core.compile.resolve_compile`) its current
        weights, adapters fused (:func:`fused_state`), in the process's compiled sampling UNet
        (:func:`core.compile.sampling_unet`): a graph without the adapters' extra matmuls, every
        UNet call of ``rows`` rows.  Its log-probs agree with this policy's up to float rounding,
        so the PPO ratio of a fresh update starts at 1 within about 1e-5.  Call it again after
        every update: it copies the weights of the moment."""
        bare = unwrap(self.unet)
        if is_side(bare) or self.denoiser.family.flow or not resolve_compile(compile, next(bare.parameters()).device):
            return self  # a side network samples eagerly (its compiled side network, core.side); the compiled module is a UNet's
        return self._like(sampling_unet(bare, rows, fused_state(self.unet)))

    @torch.no_grad()
    def reference_step(self, x_t, index, cond, uncond, eps_pre: torch.Tensor | None = None) -> PolicyStep:
        """The same step under the frozen base model (no gradient).  ``eps_pre``: a side network's
        backbone outputs at these rows, which are the base model's: no UNet runs."""
        if eps_pre is not None:
            return PolicyStep(self.schedule.step(self.guide(eps_pre.float()), x_t, index))
        if self.reference_unet is not None:
            return self._step(self.reference_unet, x_t, index, cond, uncond)
        if is_side(self.unet):
            return self._step(unwrap(self.unet).base, x_t, index, cond, uncond)
        with adapters_disabled(self.unet):
            # the bare module, not a DDP wrapper: this pass needs no gradient synchronisation
            return self._step(unwrap(self.unet), x_t, index, cond, uncond)


@contextmanager
def adapters_disabled(unet):
    model = unwrap(unet)
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def fused_state(unet) -> dict[str, torch.Tensor]:
    """``unet``'s weights with its active LoRA adapters folded in, W + (alpha / r) B A per adapted
    layer (peft's ``get_delta_weight``), under the names of the same UNet without adapters: the
    current policy as a plain UNet (``core.compile.sampling_unet``).  Out of place: peft's
    ``merge_adapter`` / ``unmerge_adapter`` would round the trained base weights a little at every
    round trip.  A UNet without adapters (full fine-tuning): its own state."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = unwrap(unet)
    deltas = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, BaseTunerLayer) and not m.disable_adapters:
                active = [a for a in m.active_adapters if a in m.lora_A]
                if active:
                    deltas[f"{name}.base_layer.weight"] = sum(m.get_delta_weight(a) for a in active)
        out = {}
        for k, v in model.state_dict().items():
            if ".lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v + deltas[k].to(v.dtype) if k in deltas else v
    return out


@contextmanager
def base_policy(policy: DiffusionPolicy):
    """The frozen base model as a policy to sample with (e.g. the same noise as the trained policy's
    samples): the trained UNet with its adapter disabled, or the frozen reference copy when the
    whole UNet is trained, or a side network's backbone."""
    if policy.reference_unet is not None or is_side(policy.unet):
        base = policy.reference_unet if policy.reference_unet is not None else unwrap(policy.unet).base
        yield policy._like(base)
        return
    with adapters_disabled(policy.unet):
        yield policy._like(unwrap(policy.unet))
