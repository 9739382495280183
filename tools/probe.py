"""Which denoising steps decide the reward?  ``make probe-steps``: a measurement to choose DPOK's
trained window (``dpok.window`` = [start, end)) and its deterministic tail
(``dpok.tail_steps``) for any pipeline, prompts and reward.

For N samples of the pipeline's own stochastic chain (the fine-tuning sampler: DDIM with eta > 0 for
Stable Diffusion, Flow-GRPO's SDE at ``noise_level`` for a flow-matching family), and each
probed k, the chain is run again from its state after k steps with fresh noise.  Two independent
continuations r, r' from the same state x_k have Cov(r, r') = Var(E[r | x_k]), so their
correlation is the share of the reward's variance already settled by x_k (0 at k = 0 when the
starting noise says nothing about the reward, 1 at the end of the chain).  The steps where this
share rises are the steps whose noise decides the reward: a policy gradient learns from those
steps' terms, and every other step's term is nearly pure noise.  Correlations are taken within
prompts (each prompt's mean removed), as DPOK's per-prompt baseline sees the reward.

The tail check: from the state after ``tail_from`` steps, a deterministic tail (DDIM at eta = 0, or
the flow ODE) of n denoiser calls
(:func:`finetune.sampler.deterministic_tail`) against the stochastic continuation, each correlated
with the original chain's reward: a tail whose correlation is as high stands in for the chain's
remaining steps in DPOK's rewards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.families import Family
from core.files import write_text_atomic
from core.jsonable import json_safe
from core.loading import default_device, load_model, resolve_model
from core.sampling import SamplingConfig, latent_shape, pipeline_image_size
from data.targets import read_prompts_file
from evaluation.settings import read_config
from finetune.config import DPOKConfig
from finetune.denoiser import denoiser_for, make_schedule
from finetune.policy import DiffusionPolicy
from finetune.prompts import prompt_group_ids
from finetune.sampler import continue_chain, decode_latents, deterministic_tail, encode_prompts, sample_trajectories
from reward.reward_fn import Reward, RewardFn, RewardSource, load_reward
from shapes import SHAPES_SD
from shapes.world import prompt_set


@dataclass(frozen=True)
class ProbeConfig:
    pipeline: str = str(SHAPES_SD)
    prompts_file: str | None = None  # any prompts, one per line; None: the shapes-world `split`
    split: str = "heldout"
    samples_per_prompt: int = 8
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # a fine-tuning config file (e.g. finetune/configs/sd15.yaml) or run folder whose sampling
    # setting (steps, guidance, eta) is probed, for each sampling key not given (make probe-steps,
    # evaluation.settings): the window found is then that config's.  None: sampling as given
    finetune_config: str | None = None
    # a flow-matching family: the SDE's noise level a, as dpok.noise_level (the probe then measures
    # the chain DPOK trains on); a Stable Diffusion folder takes sampling.eta instead
    noise_level: float = DPOKConfig.noise_level
    reward: RewardSource = field(default_factory=RewardSource)
    after_steps: tuple[int, ...] = ()  # k to probe (0 .. num_inference_steps - 1); (): every one
    tail_from: int | None = 8  # the tail check starts after this many steps; None: no tail check
    tail_steps: tuple[int, ...] = (2, 3, 4, 6)  # UNet calls of the deterministic tails compared
    batch_size: int = 64  # samples per chain batch
    output_dir: str = "reports/probe"


@dataclass(frozen=True)
class TailProbe:
    tail_steps: int  # UNet calls of the deterministic tail
    corr: float  # within-prompt correlation of its reward with the chain's
    mean_reward: float


@dataclass(frozen=True)
class ProbeResult:
    chain: str  # the chain probed, in words (chain_words)
    samples: int
    mean_reward: float  # of the chain's own samples
    settled: dict[int, float]  # k -> share of the reward's variance settled by the state after k steps
    tail_from: int | None
    stochastic_tail_corr: float | None  # the chain continued stochastically from tail_from, as TailProbe.corr
    tails: list[TailProbe]


def within_prompt_corr(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` (N,) after removing each group's mean from each; NaN
    when either has no spread left (e.g. every sample of every prompt got the same reward)."""
    def centred(v):
        v = v.astype(np.float64)
        means = np.bincount(groups, weights=v) / np.bincount(groups)
        return v - means[groups]

    a, b = centred(a), centred(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def config_noise_level(path: str | Path) -> float | None:
    """``dpok.noise_level`` of a fine-tuning config file or run folder (its config.yaml; read by
    :func:`evaluation.settings.read_config`), the flow SDE's a the probe then samples; None when it
    sets none (DPOK's default holds)."""
    path = Path(path)
    dpok = read_config(path / "config.yaml" if path.is_dir() else path).get("dpok")
    return float(dpok["noise_level"]) if isinstance(dpok, dict) and "noise_level" in dpok else None


def chain_words(cfg: ProbeConfig, family: Family) -> str:
    """The chain the probe samples for a ``family`` folder, e.g. "20 DDIM steps, guidance 5, eta 1"
    or "20 Flow-SDE steps (noise level 0.7), guidance 5"."""
    s = cfg.sampling
    if not family.flow:
        return s.describe()
    return (f"{s.num_inference_steps} Flow-SDE steps (noise level {cfg.noise_level:g}), "
            f"guidance {s.guidance_scale:g}")


def _prompts(cfg: ProbeConfig) -> list[str]:
    return read_prompts_file(cfg.prompts_file) if cfg.prompts_file else [p.text for p in prompt_set(cfg.split)]


def _check(cfg: ProbeConfig, family: Family) -> list[int]:
    if cfg.sampling.scheduler != "ddim":
        raise UserError(f"sampling.scheduler={cfg.sampling.scheduler}: the probe samples DPOK's chain (DDIM, or "
                        "a flow family's SDE).", "leave sampling.scheduler out (ddim).")
    if family.flow and cfg.noise_level <= 0:  # an SD folder's chain is DDIM at sampling.eta: no noise level
        raise UserError(f"noise_level={cfg.noise_level}: at 0 the flow SDE is the ODE, which leaves nothing open "
                        "to probe.",
                        f"set noise_level > 0 (DPOK's default is {DPOKConfig.noise_level}).")
    n = cfg.sampling.num_inference_steps
    after = list(cfg.after_steps) or list(range(n))
    bad = [k for k in after if not 0 <= k < n]
    if bad:
        raise UserError(f"after_steps {bad} are not in 0..{n - 1} (sampling.num_inference_steps={n}).",
                        "probe states before the last step, e.g. after_steps=[0,4,8].")
    if cfg.tail_from is not None and not 0 <= cfg.tail_from < n:
        raise UserError(f"tail_from={cfg.tail_from} is not in 0..{n - 1}.", "set it to the end of DPOK's window, or null.")
    room = n - (cfg.tail_from or 0)
    if cfg.tail_from is not None and any(not 1 <= t <= room for t in cfg.tail_steps):
        raise UserError(f"tail_steps {list(cfg.tail_steps)} must each be in 1..{room} (the steps after tail_from).",
                        "pass fewer UNet calls per tail, e.g. tail_steps=[2,4].")
    if cfg.samples_per_prompt < 2:
        raise UserError(f"samples_per_prompt={cfg.samples_per_prompt}: within-prompt correlations need 2 or more.",
                        "set samples_per_prompt=8 or more.")
    return sorted(set(after))


@torch.no_grad()
def probe_steps(cfg: ProbeConfig, reward_fn: RewardFn | None = None, progress=None) -> ProbeResult:
    """Measure :class:`ProbeResult` (see the module docstring); ``reward_fn`` overrides ``cfg.reward``;
    ``progress``: a tqdm-like bar advanced by samples."""
    ref = resolve_model(cfg.pipeline)  # a pipeline folder or a fine-tuned run
    after = _check(cfg, ref.family)
    device = default_device()
    pipe = load_model(ref, device=device)
    reward = Reward(reward_fn, cfg.reward.batch_size) if reward_fn else load_reward(cfg.reward, device)
    s = cfg.sampling
    shape = latent_shape(pipe, *pipeline_image_size(pipe, s.height, s.width))
    schedule = make_schedule(pipe, s, cfg.noise_level, shape).to(device)
    policy = DiffusionPolicy(getattr(pipe, ref.family.denoiser), schedule, s.guidance_scale,
                             denoiser=denoiser_for(ref.family))
    texts = [p for p in _prompts(cfg) for _ in range(cfg.samples_per_prompt)]
    gen = torch.Generator(device).manual_seed(cfg.seed)

    def score(latents, chunk):
        return reward.score(decode_latents(pipe.vae, latents), chunk).float().cpu()

    chain, again, stochastic_tail, tails = [], {k: [] for k in after}, [], {t: [] for t in cfg.tail_steps}
    for start in range(0, len(texts), cfg.batch_size):
        chunk = texts[start:start + cfg.batch_size]
        cond, uncond = encode_prompts(pipe, chunk, device, s.max_sequence_length)
        traj = sample_trajectories(policy, cond, uncond, shape, gen, chunk)
        chain.append(score(traj.final_latents, chunk))
        for k in after:
            latents, _ = continue_chain(policy, traj.latents[:, k], k, schedule.num_steps, cond, uncond, gen)
            again[k].append(score(latents[:, -1], chunk))
        if cfg.tail_from is not None:
            x = traj.latents[:, cfg.tail_from]
            latents, _ = continue_chain(policy, x, cfg.tail_from, schedule.num_steps, cond, uncond, gen)
            stochastic_tail.append(score(latents[:, -1], chunk))
            for t in cfg.tail_steps:
                tails[t].append(score(deterministic_tail(policy, x, cfg.tail_from, t, cond, uncond), chunk))
        if progress is not None:
            progress.update(len(chunk))
    groups = prompt_group_ids(texts).numpy()
    r = torch.cat(chain).numpy()

    def corr(parts):
        return within_prompt_corr(torch.cat(parts).numpy(), r, groups)

    return ProbeResult(
        chain=chain_words(cfg, ref.family), samples=len(texts), mean_reward=float(r.mean()),
        settled={k: corr(again[k]) for k in after},
        tail_from=cfg.tail_from, stochastic_tail_corr=corr(stochastic_tail) if cfg.tail_from is not None else None,
        tails=[TailProbe(t, corr(tails[t]), float(torch.cat(tails[t]).mean())) for t in cfg.tail_steps]
        if cfg.tail_from is not None else [])


def markdown(result: ProbeResult, cfg: ProbeConfig) -> str:
    n = cfg.sampling.num_inference_steps
    lines = [f"# Which of the {n} denoising steps decide the reward ({result.samples} samples, "
             f"mean reward {result.mean_reward:.3f})", "", f"Chain: {result.chain}.", "",
             "Share of the reward's variance (within prompts) settled by the state after k steps: the "
             "correlation of the rewards of two independent continuations from it. Where it rises, "
             "those steps' noise decides the reward.", "",
             "| after k steps | settled share |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result.settled.items()]
    if result.tail_from is not None:
        lines += ["", f"From the state after {result.tail_from} steps: correlation with the chain's reward "
                  f"(within prompts) of the {n - result.tail_from} stochastic steps continued afresh: "
                  f"{result.stochastic_tail_corr:.2f}; of a deterministic tail (DDIM at eta 0, or the flow ODE) "
                  "of n denoiser calls "
                  "(dpok.tail_steps=n):", "", "| n | correlation | mean reward |", "|---|---|---|"]
        lines += [f"| {t.tail_steps} | {t.corr:.2f} | {t.mean_reward:.3f} |" for t in result.tails]
    return "\n".join(lines) + "\n"


def write_probe(result: ProbeResult, cfg: ProbeConfig) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "probe.md", markdown(result, cfg))
    write_text_atomic(out / "probe.json", json.dumps(json_safe(asdict(result)), indent=2))
    return out
