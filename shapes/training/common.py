"""What the shapes-world training loops share: data distributions, matching, seeding, logging."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from core import seeds
from shapes.render import Scene, draw_scene, sample_scene
from shapes.world import (COLORS, HELDOUT_COLOR_BACKGROUND, HELDOUT_COUNT_COLOR, Prompt,
                          all_prompts, prompt_set)

# OpenAI CLIP normalisation, which the saved CLIPImageProcessor also applies.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# Scenes and prompts

def scene_matches(prompt: Prompt, scene: Scene) -> bool:
    """Whether ``scene`` shows ``prompt`` (every attribute the prompt specifies holds)."""
    objs = scene.objects
    return (len(objs) == prompt.count
            and all(o.shape == prompt.shape for o in objs)
            and (prompt.color is None or all(o.color == prompt.color for o in objs))
            and (prompt.background is None or scene.background == prompt.background))


def scene_is_heldout(scene: Scene) -> bool:
    """Whether a scene shows a held-out colour/background or count/colour pair (some object of a
    held-out colour on its held-out background; all objects of the held-out colour for a count)."""
    colors = {o.color for o in scene.objects}
    if any((c, scene.background) in HELDOUT_COLOR_BACKGROUND for c in colors):
        return True
    return len(colors) == 1 and (len(scene.objects), next(iter(colors))) in HELDOUT_COUNT_COLOR


@dataclass(frozen=True)
class RenderPool:
    """Pre-rendered training images.  ``images``: uint8 (N, S, S, 3); ``prompt_index[i]``: the
    index into ``prompts`` of the prompt image i was rendered from; ``scenes[i]`` its scene."""

    prompts: list[Prompt]
    images: np.ndarray
    prompt_index: np.ndarray
    scenes: list[Scene]

    def match_matrix(self, prompts: list[Prompt] | None = None) -> np.ndarray:
        """Bool (N, P): image i shows prompt p (vectorised :func:`scene_matches`)."""
        return match_matrix(self.scenes, prompts or self.prompts)


def match_matrix(scenes: list[Scene], prompts: list[Prompt]) -> np.ndarray:
    """Bool (N, P): scene i shows prompt p.  Same rule as :func:`scene_matches`."""
    def code(values):
        return {v: i for i, v in enumerate(values)}
    shapes = code(sorted({o.shape for s in scenes for o in s.objects} | {p.shape for p in prompts}))
    colors = code(list(COLORS))
    bgs = code(sorted({s.background for s in scenes} | {p.background for p in prompts if p.background}))
    n = np.array([len(s.objects) for s in scenes])
    shape = np.array([shapes[s.objects[0].shape] if len({o.shape for o in s.objects}) == 1 else -1
                      for s in scenes])
    ucol = np.array([colors[s.objects[0].color] if len({o.color for o in s.objects}) == 1 else -1
                     for s in scenes])
    bg = np.array([bgs[s.background] for s in scenes])
    pc = np.array([p.count for p in prompts])
    ps = np.array([shapes[p.shape] for p in prompts])
    pcol = np.array([colors[p.color] if p.color else -2 for p in prompts])
    pbg = np.array([bgs[p.background] if p.background else -2 for p in prompts])
    return ((n[:, None] == pc[None]) & (shape[:, None] == ps[None])
            & ((pcol[None] == -2) | (ucol[:, None] == pcol[None]))
            & ((pbg[None] == -2) | (bg[:, None] == pbg[None])))


def render_pool(prompts: list[Prompt], weights: np.ndarray | None, n: int, seed: int, size: int,
                exclude_heldout_scenes: bool = False, progress: bool = False) -> RenderPool:
    """``n`` renders of prompts drawn with ``weights`` (uniform when None).  Seeds are drawn from
    ``seed`` so pools for different seeds are disjoint in practice.  With
    ``exclude_heldout_scenes`` a render whose free attributes happen to form a held-out pair is
    redrawn, so the held-out pairs never appear in the images either."""
    rng = seeds.rng(seed, seeds.Stream.RENDER_POOL)
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    idx = rng.choice(len(prompts), size=n, p=p)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    scenes = []
    for i in tqdm(range(n), desc="render", unit="img", file=sys.stderr, disable=not progress,
                  mininterval=2.0):
        prompt = prompts[idx[i]]
        while True:
            scene = sample_scene(prompt, int(rng.integers(2**31)))
            if not (exclude_heldout_scenes and scene_is_heldout(scene)):
                break
        images[i] = np.asarray(draw_scene(scene, size))
        scenes.append(scene)
    return RenderPool(prompts, images, idx, scenes)


# --------------------------------------------------------------------------------------------
# The skewed training distribution of the text-to-image model

@dataclass(frozen=True)
class SkewConfig:
    """Sampling weights of the text-to-image model's training prompts (train split only).

    A prompt's weight is ``count_weights[count - 1]``, normalised over the train prompts, so counts
    three and four are rare; the held-out colour/background and count/colour pairs are absent
    (prompt_set("train") holds none, and renders that would show one are redrawn)."""

    count_weights: tuple[float, float, float, float] = (0.45, 0.45, 0.05, 0.05)


def skewed_prompt_weights(prompts: list[Prompt], skew: SkewConfig) -> np.ndarray:
    w = np.array([skew.count_weights[p.count - 1] for p in prompts], dtype=np.float64)
    # Normalise per count so each count gets its share whatever the number of prompts per count.
    for c in (1, 2, 3, 4):
        m = np.array([p.count == c for p in prompts])
        if m.any():
            w[m] /= m.sum()
    return w / w.sum()


def train_prompts() -> list[Prompt]:
    return prompt_set("train")


def uniform_prompts() -> list[Prompt]:
    return all_prompts()


# --------------------------------------------------------------------------------------------
# Images as tensors

def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the diffusers VAE's range)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_clip(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) normalised as CLIPImageProcessor does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def degrade_batch(images: np.ndarray, rng: np.random.Generator, prob: float,
                  blur: tuple[float, float], noise: tuple[float, float]) -> np.ndarray:
    """Blur + grain like a generated image's on a random share ``prob`` of the batch."""
    from scipy.ndimage import gaussian_filter

    out = images.copy()
    for i in range(len(out)):
        if rng.random() < prob:
            x = out[i].astype(np.float32)
            s = rng.uniform(*blur) * out.shape[1] / 64
            if s > 0.05:
                x = gaussian_filter(x, sigma=(s, s, 0))
            x += rng.normal(0.0, rng.uniform(*noise), size=x.shape).astype(np.float32)
            out[i] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Progress

class Progress:
    """A tqdm bar on stderr plus one plain loss line every ``log_every`` steps on stdout (so a
    log file keeps the curve)."""

    def __init__(self, name: str, total: int, log_every: int, enabled: bool = True):
        self.name, self.log_every = name, log_every
        self.bar = tqdm(total=total, desc=name, file=sys.stderr, disable=not enabled, mininterval=2.0)
        self.t0 = time.perf_counter()
        self.acc: dict[str, list[float]] = {}
        self.enabled = enabled

    def step(self, step: int, **losses: float) -> None:
        for k, v in losses.items():
            self.acc.setdefault(k, []).append(float(v))
        self.bar.update(1)
        if self.enabled and self.log_every and (step + 1) % self.log_every == 0:
            parts = " ".join(f"{k} {np.mean(v):.4f}" for k, v in self.acc.items())
            print(f"[{self.name}] step {step + 1}/{self.bar.total} {parts} "
                  f"({time.perf_counter() - self.t0:.0f} s)", flush=True)
            self.acc = {}

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.t0
