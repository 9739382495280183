"""Seeded, deterministic renderer of shapes-world prompts.

A scene is sampled from the prompt and a seed (object sizes, positions, and any attribute the prompt
leaves free), then drawn at ``SUPERSAMPLE``x the target size and box-filtered down, which gives
anti-aliased edges like a generated image's.  The same (prompt, seed, size) always gives the same
pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from core import seeds
from core.sampling import SamplerSettings
from data.generations import save_images
from shapes.world import BACKGROUNDS, COLORS, Prompt, perturb

# How a render is recorded in the generations table (the renderer has no sampler settings).
RENDERER = SamplerSettings(sampler="shapes-renderer", num_inference_steps=1, guidance_scale=0.0, eta=0.0)

DEFAULT_SIZE = 64
SUPERSAMPLE = 4
# Object side as a fraction of the image side, and the minimum gap between objects (fraction).
SIZE_RANGE = (0.20, 0.30)
MIN_GAP = 0.05
MARGIN = 0.04


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    x: float  # left edge, fraction of the image side
    y: float  # top edge, fraction of the image side
    size: float  # side of the bounding box, fraction of the image side


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]


def sample_scene(prompt: Prompt, seed: int) -> Scene:
    """Place ``prompt.count`` non-overlapping objects; free attributes drawn from ``seed``."""
    rng = np.random.default_rng([seed, prompt.count, hash_text(prompt.text)])
    background = prompt.background or str(rng.choice(list(BACKGROUNDS)))
    for _attempt in range(1000):
        objects: list[SceneObject] = []
        for _ in range(prompt.count):
            size = float(rng.uniform(*SIZE_RANGE))
            for _try in range(200):
                x = float(rng.uniform(MARGIN, 1 - MARGIN - size))
                y = float(rng.uniform(MARGIN, 1 - MARGIN - size))
                if all(_apart(x, y, size, o) for o in objects):
                    color = prompt.color or str(rng.choice(list(COLORS)))
                    objects.append(SceneObject(prompt.shape, color, x, y, size))
                    break
            else:
                break  # no room: start the whole scene again
        if len(objects) == prompt.count:
            return Scene(background, tuple(objects))
    raise RuntimeError(f"could not place {prompt.count} objects")  # unreachable at these sizes


def _apart(x: float, y: float, size: float, o: SceneObject) -> bool:
    return (x + size + MIN_GAP <= o.x or o.x + o.size + MIN_GAP <= x
            or y + size + MIN_GAP <= o.y or o.y + o.size + MIN_GAP <= y)


def hash_text(text: str) -> int:
    """A stable (not per-process salted) 32-bit hash, so seeds mean the same in every run."""
    h = 2166136261
    for b in text.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def draw_scene(scene: Scene, size: int = DEFAULT_SIZE,
               fill: dict[str, tuple[int, int, int]] | None = None) -> Image.Image:
    """Draw ``scene``; ``fill`` maps a colour name to the RGB (0-255) drawn for it instead of the
    palette's (make oracle-check's hue sweep recolours objects this way)."""
    colors = {**COLORS, **(fill or {})}
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        box = [o.x * big, o.y * big, (o.x + o.size) * big - 1, (o.y + o.size) * big - 1]
        if o.shape == "circle":
            draw.ellipse(box, fill=colors[o.color])
        elif o.shape == "square":
            draw.rectangle(box, fill=colors[o.color])
        else:  # pragma: no cover - Prompt validates shapes
            raise ValueError(o.shape)
    return img.resize((size, size), Image.BOX)


def render(prompt: Prompt | str, seed: int, size: int = DEFAULT_SIZE) -> Image.Image:
    """The image of ``prompt`` for ``seed``: a ``size`` x ``size`` RGB PIL image."""
    if isinstance(prompt, str):
        prompt = Prompt.parse(prompt)
    return draw_scene(sample_scene(prompt, seed), size)


def degrade(image: np.ndarray, rng: np.random.Generator, blur_sigma: float, noise_sigma: float
            ) -> np.ndarray:
    """Gaussian blur (pixels, scaled to the image side / 64) and additive Gaussian noise (0-255
    units): the soft edges and grain of a generated image.  uint8 HxWx3 in and out."""
    from scipy.ndimage import gaussian_filter

    sigma = blur_sigma * image.shape[0] / DEFAULT_SIZE
    out = gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0))
    out += rng.normal(0.0, noise_sigma, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_round(store, prompts: list[Prompt], per_prompt: int, seed: int = 0,
                 size: int = DEFAULT_SIZE, mismatch_rate: float = 0.0) -> list[dict]:
    """Render ``per_prompt`` images of each prompt into ``store`` (PNGs + generations rows).

    Seeds are ``core.seeds.round_image_seed(seed, i)`` for the i-th image of a prompt, so rounds are
    reproducible.
    With ``mismatch_rate`` > 0, that share of images shows a one-attribute perturbation of its
    prompt (recorded under the original prompt), like a model that gets some prompts wrong.
    A labeling round of renders is the shapes world's stand-in until a model is sampled.
    """
    rng = seeds.rng(seed, seeds.Stream.ROUND_MISMATCH)
    images, texts, ids, cats, image_seeds = [], [], [], [], []
    for p in prompts:
        for i in range(per_prompt):
            s = seeds.round_image_seed(seed, i)
            shown = p
            if rng.random() < mismatch_rate:
                shown = perturb(p, p.specified[int(rng.integers(len(p.specified)))], rng)
            images.append(render(shown, s, size))
            texts.append(p.text)
            ids.append(p.prompt_id)
            cats.append(p.category)
            image_seeds.append(s)
    return save_images(store, images, prompts=texts, prompt_ids=ids, categories=cats, seeds=image_seeds,
                       model_id="shapes-renderer", settings=RENDERER)
