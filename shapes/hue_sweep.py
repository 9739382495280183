"""The colour verdict's test bed: renders recoloured step by step in hue away from each palette
colour towards its hue neighbours (yellow -> orange -> red, green -> teal -> blue, blue -> violet
-> red, ...), and what a person would call each step.

A step keeps the render's prompt (its colour is the palette colour), so the oracle should accept
it while a person still names its colour by the prompt's colour and reject it once a person names
it differently.  What a person calls a colour comes from :data:`NAME_BANDS`, ranges of CIELAB hue
angle for the basic colour terms, set apart from the oracle's own bands (``shapes.oracle.HUE_BANDS``)
so the check is not the oracle judging itself.  Steps within :data:`BORDER_GUARD` of a name border
are *borderline* (people disagree there) and carry no target.

Used by ``make oracle-check`` (pipelines/oracle_check.py) and its test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from shapes.colorspace import hue_difference, lab_to_lch, lch_to_srgb, srgb_to_lab
from shapes.world import COLORS

# What people call a saturated colour by its CIELAB (D65) hue angle: (name, from, to) in degrees,
# the borders about halfway (within a few degrees) between the hues of the sRGB prototypes of
# neighbouring basic colour terms
# (red #FF0000 40; orange #FFA500 73 and #FF8C00 64; yellow #FFFF00 103 and gold #FFD700 91; green
# #008000 136; teal / cyan #008080 196; blue #0000FF 306 and royal blue #4169E1 292; purple /
# violet #800080 328 and #8A2BE2 313; pink #FF1493 356).  Approximate, as colour naming is.
NAME_BANDS: tuple[tuple[str, float, float], ...] = (
    ("pink", 342.0, 18.0),
    ("red", 18.0, 52.0),
    ("orange", 52.0, 82.0),
    ("yellow", 82.0, 114.0),
    ("green", 114.0, 168.0),
    ("teal", 168.0, 246.0),
    ("blue", 246.0, 312.0),
    ("purple", 312.0, 342.0),
)
BORDER_GUARD = 6.0  # degrees of hue either side of a name border: borderline, no target

Zone = Literal["correct", "same name", "borderline", "other name"]


def person_name(hue: float) -> str:
    """The basic colour term for a saturated colour of CIELAB hue ``hue`` (degrees)."""
    h = hue % 360.0
    for name, start, end in NAME_BANDS:
        if (start <= h < end) if start < end else (h >= start or h < end):
            return name
    raise AssertionError("NAME_BANDS cover the circle")  # pragma: no cover


def zone(palette_color: str, hue: float, shift: float) -> Zone:
    """How a step of hue ``hue``, ``shift`` degrees from ``palette_color``, ought to be judged."""
    if shift == 0:
        return "correct"
    if min(abs(hue_difference(hue, b)) for _, b, _ in NAME_BANDS) < BORDER_GUARD:
        return "borderline"
    return "same name" if person_name(hue) == palette_color else "other name"


@dataclass(frozen=True)
class SweepStep:
    color: str  # the palette colour (and the prompt's)
    towards: str  # the neighbour the hue moves towards
    shift: float  # degrees of hue away from the palette colour (0: the palette colour itself)
    hue: float  # CIELAB hue of the drawn colour, degrees
    rgb: tuple[int, int, int]  # what is drawn
    person: str  # what a person calls it (person_name)
    zone: Zone


def palette_lch() -> dict[str, np.ndarray]:
    """Each palette colour's CIELAB L*, chroma, hue (3,)."""
    return {c: lab_to_lch(srgb_to_lab(np.array(rgb, dtype=np.float64))) for c, rgb in COLORS.items()}


def neighbours() -> dict[str, tuple[str, str]]:
    """Each palette colour's hue neighbours: (the next lower hue, the next higher), around the circle."""
    order = sorted(COLORS, key=lambda c: palette_lch()[c][2])
    return {c: (order[i - 1], order[(i + 1) % len(order)]) for i, c in enumerate(order)}


def sweep_steps(step: float = 5.0) -> list[SweepStep]:
    """Per palette colour its own colour (shift 0), then every ``step`` degrees of hue towards each
    neighbour up to the neighbour's hue, lightness and chroma moving linearly along (the colour in
    between yellow and red is orange, between green and blue teal)."""
    lch = palette_lch()
    out = []
    for c, (lower, higher) in neighbours().items():
        l0, c0, h0 = lch[c]
        out.append(SweepStep(c, c, 0.0, float(h0), COLORS[c], person_name(h0), "correct"))
        for towards, sign in ((lower, -1.0), (higher, 1.0)):
            l1, c1, h1 = lch[towards]
            arc = (sign * (h1 - h0)) % 360.0  # degrees to travel in this direction
            for shift in np.arange(step, arc + 1e-9, step):
                t = shift / arc
                hue = float((h0 + sign * shift) % 360.0)
                rgb = lch_to_srgb(l0 + t * (l1 - l0), c0 + t * (c1 - c0), hue)
                out.append(SweepStep(c, towards, float(shift), hue, rgb, person_name(hue), zone(c, hue, shift)))
    return out


class VaeRoundTrip:
    """Encode and decode images with a pipeline's VAE (a sample of the latent distribution, as the
    model's own latents carry noise): what a correct image looks like after the generator's decoder."""

    def __init__(self, pipeline_dir):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae", local_files_only=True).eval()

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8."""
        import torch

        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = self.vae.encode(x).latent_dist.sample(generator=g)
            y = self.vae.decode(z).sample
        return ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
