"""Augmentation of fitting tiles: one geometric transform per tile, brightness and contrast.

Draws take an explicit `np.random.Generator` (sampling.py seeds one per tile), so a resumed
run or another worker draws the same transforms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from bone_apps.core.data.normalize import NormMethod, value_range
from bone_apps.core.errors import FitConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation probabilities, the paper's by default (§2.3.1).

    Per tile, one geometric transform: horizontal flip, vertical flip, rotation by 90, 180
    or 270 degrees (equally likely), or none (the remaining probability, 16.8 %). Per
    normalized patch, independently: a brightness shift U(-brightness, brightness) and a
    contrast scale U(contrast_low, contrast_high); then values are clipped to the
    normalization's range.
    """

    p_hflip: float = 0.166
    p_vflip: float = 0.166
    p_rotate: float = 0.5
    p_brightness: float = 0.4
    brightness: float = 0.15
    p_contrast: float = 0.4
    contrast_low: float = 0.75
    contrast_high: float = 1.25

    def __post_init__(self) -> None:
        probs = (self.p_hflip, self.p_vflip, self.p_rotate, self.p_brightness, self.p_contrast)
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise FitConfigError("augmentation probabilities must lie between 0 and 1.")
        if self.p_hflip + self.p_vflip + self.p_rotate > 1.0 + 1e-9:
            raise FitConfigError("horizontal flip, vertical flip and rotation probabilities add up "
                                 "to more than 1: lower them.")
        if self.brightness < 0 or not 0 < self.contrast_low <= self.contrast_high:
            raise FitConfigError("brightness must be >= 0 and 0 < contrast low <= contrast high.")

    @property
    def p_none(self) -> float:
        return max(0.0, 1.0 - self.p_hflip - self.p_vflip - self.p_rotate)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentConfig:
        return cls(**data)


class Geometry(int, Enum):
    """One tile's geometric augmentation."""

    NONE = 0
    HFLIP = 1
    VFLIP = 2
    ROT90 = 3
    ROT180 = 4
    ROT270 = 5


def draw_geometry(rng: np.random.Generator, aug: AugmentConfig) -> Geometry:
    """Draw one tile's transform with the configured probabilities."""
    u = rng.random()
    if u < aug.p_hflip:
        return Geometry.HFLIP
    if u < aug.p_hflip + aug.p_vflip:
        return Geometry.VFLIP
    if u < aug.p_hflip + aug.p_vflip + aug.p_rotate:
        return Geometry(Geometry.ROT90 + int(rng.integers(0, 3)))
    return Geometry.NONE


def apply_geometry(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Flip or rotate the last two axes (Y, X) of a square patch."""
    if geometry is Geometry.HFLIP:
        return array[..., ::-1]
    if geometry is Geometry.VFLIP:
        return array[..., ::-1, :]
    if geometry in (Geometry.ROT90, Geometry.ROT180, Geometry.ROT270):
        return np.rot90(array, int(geometry) - int(Geometry.ROT90) + 1, axes=(-2, -1))
    return array


def draw_intensity(rng: np.random.Generator, aug: AugmentConfig) -> tuple[float, float]:
    """(shift, scale) for one patch: each applied with its own probability, else (0, 1)."""
    shift = rng.uniform(-aug.brightness, aug.brightness) if rng.random() < aug.p_brightness else 0.0
    scale = (rng.uniform(aug.contrast_low, aug.contrast_high)
             if rng.random() < aug.p_contrast else 1.0)
    return float(shift), float(scale)


def apply_intensity(batch: np.ndarray, shift: float, scale: float, method: NormMethod | str) -> None:
    """Shift brightness, scale contrast and clip to the normalization's range, in place."""
    if shift:
        batch += np.float32(shift)
    if scale != 1.0:
        batch *= np.float32(scale)
    low, high = value_range(method)
    np.clip(batch, low, high, out=batch)
