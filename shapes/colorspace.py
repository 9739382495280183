"""sRGB <-> CIELAB (D65) and CIELAB's polar form (lightness, chroma, hue angle): the perceptual
space of the oracle's colour verdict (shapes.oracle) and of make oracle-check's hue sweep."""

from __future__ import annotations

import numpy as np

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_D65 = np.array([0.95047, 1.0, 1.08883])  # reference white, XYZ
_EPS = 6 / 29  # where CIELAB's cube root turns linear


def srgb_to_lab(rgb) -> np.ndarray:
    """(..., 3) sRGB in 0-255 -> (..., 3) L* a* b* (L* in 0-100)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _D65
    f = np.where(xyz > _EPS**3, np.cbrt(xyz), xyz / (3 * _EPS**2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab) -> np.ndarray:
    """(..., 3) L* a* b* -> (..., 3) sRGB in 0-255 as floats, not clipped (out of gamut: < 0 or > 255)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > _EPS, f**3, 3 * _EPS**2 * (f - 4 / 29)) * _D65
    lin = xyz @ _XYZ_TO_SRGB.T
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.abs(lin) ** (1 / 2.4) * np.sign(lin) - 0.055)
    return 255.0 * c


def lab_to_lch(lab) -> np.ndarray:
    """(..., 3) L* a* b* -> (..., 3) L*, chroma, hue angle in degrees [0, 360)."""
    lab = np.asarray(lab, dtype=np.float64)
    hue = np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360.0
    return np.stack([lab[..., 0], np.hypot(lab[..., 1], lab[..., 2]), hue], -1)


def lch_to_lab(lch) -> np.ndarray:
    lch = np.asarray(lch, dtype=np.float64)
    h = np.radians(lch[..., 2])
    return np.stack([lch[..., 0], lch[..., 1] * np.cos(h), lch[..., 1] * np.sin(h)], -1)


def hue_difference(h, ref: float):
    """Signed hue angle ``h - ref`` in degrees, wrapped to [-180, 180)."""
    return (np.asarray(h) - ref + 180.0) % 360.0 - 180.0


def lch_to_srgb(lightness: float, chroma: float, hue: float) -> tuple[int, int, int]:
    """The sRGB colour (0-255) of a CIELAB L*, chroma, hue (degrees); out of gamut the chroma is
    lowered until it fits, so lightness and hue are kept."""
    for scale in np.linspace(1.0, 0.0, 101):
        rgb = lab_to_srgb(lch_to_lab([lightness, chroma * scale, hue]))
        if np.all((rgb >= -0.5) & (rgb <= 255.5)):
            return tuple(int(v) for v in np.clip(np.rint(rgb), 0, 255))
    raise ValueError(f"L*={lightness} is outside sRGB")  # unreachable for L* in 0-100 (grey fits)
