"""The sliding-window inferer: chunks of a scan through any predictor, merged slice by slice.

MONAI's `sliding_window_inference` is the model: any callable maps a batch of chunks to
probabilities, windows overlap and the last one is shifted back to end at the edge
(windows.plan_axis), overlapping outputs are merged as a weighted average with optional
Gaussian weights (windows.SliceAccumulator), and the merge may live on another device than
the network. Unlike MONAI's, the input is read slice by slice (SliceSource) and each merged
slice is handed out the moment no chunk still to come touches it, so a scan of any length costs
the same memory. Labelling, thresholding and tallying come after it (segment.segment_volume).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.data.sampling import Dims
from bone_apps.core.errors import Cancelled
from bone_apps.core.io.volume import Volume
from bone_apps.core.model.spec import ModelSpec
from bone_apps.core.predict.windows import AxisPlan, SliceAccumulator, plan_axis

if TYPE_CHECKING:
    import torch

    from bone_apps.core.data.normalize import NormMethod, ScanStats


@dataclass(frozen=True)
class ChunkPlan:
    """How a scan is cut into chunks: axis plans, and for 2D/2.5D one window row per slice."""

    dims: Dims
    shape: tuple[int, int, int]
    z: AxisPlan  # 2D/2.5D: windows of depth 1 at every slice
    y: AxisPlan
    x: AxisPlan
    context: int
    in_channels: int

    @property
    def per_slab(self) -> int:
        """Chunks per z position (in-plane windows)."""
        return len(self.y.starts) * len(self.x.starts)

    @property
    def chunks(self) -> int:
        return len(self.z.starts) * self.per_slab

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) or (1, D, H, W) of one network input."""
        if self.dims is Dims.D3:
            return (1, self.z.input, self.y.input, self.x.input)
        return (self.in_channels, self.y.input, self.x.input)

    @property
    def window(self) -> tuple[int, int, int]:
        return (self.z.window, self.y.window, self.x.window)

    def corner(self, task: int) -> tuple[int, int, int]:
        """(z0, y0, x0) of chunk number `task` (z slowest, x fastest)."""
        zi, rest = divmod(task, self.per_slab)
        yi, xi = divmod(rest, len(self.x.starts))
        return self.z.starts[zi], self.y.starts[yi], self.x.starts[xi]

    def first_slice_of(self, task: int) -> int:
        """First slice chunk `task` and every later chunk touches (the scan's depth at the end)."""
        if task >= self.chunks:
            return self.shape[0]
        return self.z.starts[task // self.per_slab]


def plan_chunks(shape: tuple[int, int, int], spec: ModelSpec, chunk: int, chunk_depth: int | None,
                overlap: float) -> ChunkPlan:
    """Cut a (Z, Y, X) scan into chunks for a network described by `spec`."""
    nz, ny, nx = shape
    multiple = spec.required_multiple
    if spec.dims is Dims.D3:
        z = plan_axis(nz, chunk_depth or spec.patch_depth, multiple, overlap)
    else:
        z = AxisPlan(nz, 1, 1, tuple(range(nz)))
    return ChunkPlan(spec.dims, shape, z, plan_axis(ny, chunk, multiple, overlap),
                     plan_axis(nx, chunk, multiple, overlap), spec.context, spec.in_channels)


class SliceSource:
    """Normalized, padded slices on the compute device, each read once and dropped when passed."""

    def __init__(self, volume: Volume, stats: ScanStats, norm: NormMethod, plan: ChunkPlan, device) -> None:
        import torch

        self._torch = torch
        self.volume = volume
        self.stats = stats
        self.norm = norm
        self.pad = ((0, plan.y.pad), (0, plan.x.pad))
        self.device = device
        self.cache: dict[int, torch.Tensor] = {}
        self.peak = 0

    def get(self, z: int) -> torch.Tensor:
        from bone_apps.core.data.normalize import normalize

        z = min(max(z, 0), self.volume.shape[0] - 1)  # edges replicated (2.5D context, 3D padding)
        tensor = self.cache.get(z)
        if tensor is None:
            data = normalize(self.volume.read_slice(z), self.stats, self.norm)
            if self.pad[0][1] or self.pad[1][1]:
                # Mirror past the edge: the network sees plausible context, cropped away after.
                mode = "reflect" if min(data.shape) > 1 else "edge"
                data = np.pad(data, self.pad, mode=mode)
            tensor = self._torch.from_numpy(np.ascontiguousarray(data)).to(self.device)
            self.cache[z] = tensor
            self.peak = max(self.peak, len(self.cache))
        return tensor

    def drop_below(self, z: int) -> None:
        for key in [k for k in self.cache if k < z]:
            del self.cache[key]


def chunk_input(source: SliceSource, plan: ChunkPlan, z0: int, y0: int, x0: int) -> torch.Tensor:
    torch = source._torch
    rows, cols = slice(y0, y0 + plan.y.input), slice(x0, x0 + plan.x.input)
    if plan.dims is Dims.D3:
        return torch.stack([source.get(z0 + d)[rows, cols] for d in range(plan.z.input)])[None]
    if plan.dims is Dims.D25:
        k = plan.context
        return torch.stack([source.get(z0 + d)[rows, cols] for d in range(-k, k + 1)])
    return source.get(z0)[rows, cols][None]


def infer_slices(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    source: SliceSource,
    plan: ChunkPlan,
    batch: int,
    classes: int,
    weights: torch.Tensor | None = None,
    stitch_device: torch.device | str | None = None,
    stop: threading.Event | None = None,
) -> Generator[tuple[int, torch.Tensor], None, int]:
    """Run every chunk of `plan` through `predictor` and yield each merged slice in order.

    Args:
        predictor: maps chunks (B, C, ...) on the compute device to probabilities
            (B, classes, ...); e.g. a ChunkRunner.
        source: the scan's normalized slices on the compute device.
        plan: the chunks (plan_chunks).
        batch: chunks per call of `predictor`.
        classes: channels of the predictor's output.
        weights: blend weights of one window's output region (windows.window_weights), on the
            stitching device; None for a plain average.
        stitch_device: where outputs are merged (None: the compute device).
        stop: set it to stop between batches (raises Cancelled).

    Yields:
        (z, probabilities (classes, Y, X) float32 on the stitching device), z = 0, 1, ...; the
        tensor is reused once the next slice is asked for.

    Returns:
        The most slices the merge held at once.
    """
    import torch

    device = torch.device(stitch_device if stitch_device is not None else source.device)
    ny, nx = plan.shape[1:]
    accumulator = SliceAccumulator(classes, (ny, nx), device)
    wz, wy, wx = plan.window
    written = 0
    task = 0
    while task < plan.chunks:
        end = min(task + batch, plan.chunks)
        with torch.no_grad():
            corners = [plan.corner(t) for t in range(task, end)]
            chunks = torch.stack([chunk_input(source, plan, *c) for c in corners])
            probs = predictor(chunks).to(device)
            for (z0, y0, x0), p in zip(corners, probs):
                values = p[:, :wz, :wy, :wx] if plan.dims is Dims.D3 else p[:, None, :wy, :wx]
                accumulator.add(z0, y0, x0, values, weights)
            del chunks, probs
        task = end
        ready = plan.first_slice_of(task)
        source.drop_below(ready - plan.context)
        while written < ready:
            merged = accumulator.pop(written)
            yield written, merged
            accumulator.recycle(merged)
            written += 1
        if stop is not None and stop.is_set():
            raise Cancelled("prediction was stopped; the unfinished output was removed.")
    return accumulator.peak_open
