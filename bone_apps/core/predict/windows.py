"""Chunk windows for prediction and the streaming weighted-average merge of their outputs.

Windows tile an axis with a fixed step and the last one shifted back to end at the edge, so
every voxel is covered by windows of one size (MONAI's `dense_patch_slices` does the same).
The network's outputs are merged as a true weighted average: a float32 running sum of
weight x probability and a running sum of weights, divided when a slice is complete. The
accumulator holds only the slices that windows still in flight touch, so a scan of any
length costs the same memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.choices import Choice
from bone_apps.core.errors import PredictConfigError

if TYPE_CHECKING:
    import torch

# Gaussian weights: sigma as a fraction of the window edge, and the floor they are clamped
# to so that voxels at a window's rim (and at the scan's edge, seen by one window only) keep a
# positive weight. MONAI uses the same sigma and clamps likewise.
GAUSSIAN_SIGMA_SCALE = 0.125
GAUSSIAN_MIN_WEIGHT = 1e-3


class BlendMode(Choice, what="blend mode", error=PredictConfigError):
    """How overlapping chunk outputs are weighted in the average.

    MEAN: every voxel of every chunk weighs the same (the paper's averaging).
    GAUSSIAN: a chunk's centre weighs more than its rim, which hides seams where a network
        sees less context; weights are clamped away from zero.
    """

    MEAN = "mean"
    GAUSSIAN = "gaussian"



def check_overlap(overlap: float) -> float:
    """`overlap` as a float if it lies in [0, 1); PredictConfigError otherwise."""
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise PredictConfigError(
            f"overlap {overlap!r} is not a number: use a fraction such as 0.25.") from None
    if not 0.0 <= value < 1.0:
        raise PredictConfigError(
            f"overlap {overlap} is outside [0, 1): use a fraction such as 0.25 (0 for none).")
    return value


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value`."""
    return -(-int(value) // int(multiple)) * int(multiple)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of edge `window` covering [0, size).

    The step is `window * (1 - overlap)` (at least 1); the last window is shifted back to end
    exactly at `size`. A window at least as large as the axis gives the single start 0.

    Args:
        size: length of the axis (> 0).
        window: window edge (> 0).
        overlap: fraction of a window shared with the next one, in [0, 1).
    """
    if size <= 0 or window <= 0:
        raise ValueError(f"size {size} and window {window} must be positive")
    overlap = check_overlap(overlap)
    if window >= size:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / step) + 1
    starts = [min(i * step, size - window) for i in range(count)]
    return sorted(set(starts))


def window_grid(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Start corners of the windows covering an N-d array, in C order (last axis fastest)."""
    if len(shape) != len(window):
        raise ValueError(f"shape {tuple(shape)} and window {tuple(window)} differ in dimensions")
    axes = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
    return list(product(*axes))


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of a scan is cut into chunks for a network.

    Attributes:
        size: the axis length in the scan.
        window: edge of the region a chunk's output covers (<= size).
        input: edge of the network input (a multiple of the network's required multiple);
            larger than `window` only when one chunk covers the whole axis, in which case the
            input is padded past the scan's edge and the output cropped back.
        starts: window start offsets (see window_starts).
    """

    size: int
    window: int
    input: int
    starts: tuple[int, ...]

    @property
    def pad(self) -> int:
        """Voxels added past the end of the axis so one input fits."""
        return max(0, self.input - self.size)


def plan_axis(size: int, chunk: int, multiple: int, overlap: float) -> AxisPlan:
    """Cut an axis of `size` voxels into chunks of about `chunk` voxels.

    The chunk is rounded up to the network's `multiple`. A chunk that reaches past the axis
    shrinks to the axis, rounded up to the multiple (padded, then cropped), so a small scan
    costs no more than its size.
    """
    if chunk < 1 or multiple < 1:
        raise PredictConfigError(f"chunk {chunk} must be a positive number of voxels.")
    edge = round_up(chunk, multiple)
    if edge >= size:
        return AxisPlan(size, size, round_up(size, multiple), (0,))
    return AxisPlan(size, edge, edge, tuple(window_starts(size, edge, overlap)))


def window_weights(shape: Sequence[int], mode: BlendMode | str = BlendMode.MEAN,
                   sigma_scale: float = GAUSSIAN_SIGMA_SCALE,
                   min_weight: float = GAUSSIAN_MIN_WEIGHT) -> np.ndarray:
    """Weights of one window's voxels, float32 of `shape`: ones, or a Gaussian with maximum 1
    clamped below at `min_weight`."""
    mode = BlendMode.parse(mode)
    if mode is BlendMode.MEAN:
        return np.ones(tuple(shape), dtype=np.float32)
    weights = np.ones((), dtype=np.float64)
    for edge in shape:
        sigma = max(edge * sigma_scale, 1e-6)
        centre = (edge - 1) / 2.0
        axis = np.exp(-0.5 * ((np.arange(edge) - centre) / sigma) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights /= weights.max()
    return np.maximum(weights, min_weight).astype(np.float32)


class SliceAccumulator:
    """Weighted running average of chunk outputs over a moving range of slices.

    Each open slice z holds a float32 sum (C, Y, X) of weight x value and a float32 weight sum
    (Y, X). `add` opens slices lazily; `pop` divides a complete slice and closes it. Only the
    slices that chunks still being processed touch are open, so memory is bounded by the
    chunk depth and batch, never by the scan's length. Buffers of closed slices are reused.

    Args:
        channels: C, values per voxel (class probabilities).
        plane: (Y, X) of a slice.
        device: torch device for the buffers (the compute device avoids copies).
    """

    def __init__(self, channels: int, plane: tuple[int, int], device: str | torch.device = "cpu") -> None:
        import torch

        self._torch = torch
        self.channels = int(channels)
        self.plane = (int(plane[0]), int(plane[1]))
        self.device = torch.device(device)
        self._sums: dict[int, torch.Tensor] = {}
        self._weights: dict[int, torch.Tensor] = {}
        self._free_sums: list[torch.Tensor] = []
        self._free_weights: list[torch.Tensor] = []
        self.peak_open = 0  # most slices open at once (memory use is this x (C + 1) x Y x X x 4 bytes)

    @property
    def open_slices(self) -> list[int]:
        """Indices of the slices holding partial sums, ascending."""
        return sorted(self._sums)

    def _open(self, z: int) -> None:
        torch = self._torch
        if self._free_sums:
            total = self._free_sums.pop().zero_()
        else:
            total = torch.zeros((self.channels, *self.plane), dtype=torch.float32, device=self.device)
        if self._free_weights:
            weight = self._free_weights.pop().zero_()
        else:
            weight = torch.zeros(self.plane, dtype=torch.float32, device=self.device)
        self._sums[z], self._weights[z] = total, weight
        self.peak_open = max(self.peak_open, len(self._sums))

    def add(self, z0: int, y0: int, x0: int, values: torch.Tensor,
            weight: torch.Tensor | None = None) -> None:
        """Add one chunk's output.

        Args:
            z0, y0, x0: the chunk's first slice, row and column in the scan.
            values: (C, D, H, W) float32; D = 1 for a 2D or 2.5D chunk.
            weight: (D, H, W) float32 voxel weights, or None for weight 1 everywhere (mean).
        """
        channels, depth, height, width = values.shape
        if channels != self.channels:
            raise ValueError(f"{channels} channels added to an accumulator of {self.channels}")
        if y0 < 0 or x0 < 0 or y0 + height > self.plane[0] or x0 + width > self.plane[1]:
            raise ValueError(f"chunk at ({y0}, {x0}) of {height}x{width} leaves the {self.plane} plane")
        rows, cols = slice(y0, y0 + height), slice(x0, x0 + width)
        for d in range(depth):
            z = z0 + d
            if z not in self._sums:
                self._open(z)
            if weight is None:
                self._sums[z][:, rows, cols] += values[:, d]
                self._weights[z][rows, cols] += 1.0
            else:
                self._sums[z][:, rows, cols].addcmul_(values[:, d], weight[d])
                self._weights[z][rows, cols] += weight[d]

    def pop(self, z: int) -> torch.Tensor:
        """Close slice z and return its weighted average, (C, Y, X) float32.

        The tensor belongs to the caller; hand it back with `recycle` to reuse its memory.

        Raises:
            KeyError: no chunk touched slice z.
            ValueError: some voxel of the slice was covered by no chunk.
        """
        total = self._sums.pop(z)
        weight = self._weights.pop(z)
        if not bool((weight > 0).all()):
            raise ValueError(f"slice {z} has voxels that no chunk covered")
        total.div_(weight)
        self._free_weights.append(weight)
        return total

    def recycle(self, total: torch.Tensor) -> None:
        """Return a tensor from `pop` so a later slice reuses its memory."""
        if tuple(total.shape) == (self.channels, *self.plane) and total.device == self.device:
            self._free_sums.append(total)
