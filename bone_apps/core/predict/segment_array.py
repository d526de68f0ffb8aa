"""Segment a volume held in memory with a fitted model, exactly as DLPred segments a scan file.

Viewers such as napari hold a scan as an array (a NumPy array, or any array-like that reads
slices on demand). `segment_array` runs a weights file on such an array with the model's own
normalization (statistics of the whole array, as `bone predict` computes them for a scan) and
the inference settings the fit validated (chunk, overlap, blend), through the same inferer
(`predict.segment_volume`): the labels equal those `bone predict` writes for the same voxels
saved as a file. It is a generator: it yields progress records and returns the labels.

`ArrayVolume` is what makes this possible: an array seen through the `volume.Volume`
interface, so that core jobs reading volumes (statistics, prediction, scoring) take arrays
too. No Qt here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bone_apps.core.errors import Cancelled, LabelError, VolumeError
from bone_apps.core.io.volume import MASK_DTYPES, SCAN_DTYPES, Volume, VoxelSize

# The PredictConfig fields that apply to one array (the others name files or choose outputs).
ARRAY_OPTIONS = ("chunk", "chunk_depth", "overlap", "threshold", "blend", "batch", "device", "tta")
_LABEL_LIMIT = 1 << 16  # label values a mask may hold (uint16)


class ArrayVolume(Volume):
    """A (Z, Y, X) array in memory, or any array-like reading slices on demand, as a Volume.

    Slices are read with `data[z0:z1]`, so a lazy array (dask, zarr, a viewer's layer data)
    is read slab by slab. Pixel types a scan or mask file cannot have are converted slice by
    slice: a scan to float32 (e.g. float64, int32 or bool), a mask to uint16 (any integer
    type, when its labels lie in 0..65535; bool to uint8).

    Args:
        data: array-like of shape (Z, Y, X) with `shape`, `dtype` and `__getitem__`.
        name: what messages call it (a layer's name).
        voxel_size: micrometres per voxel, or None.
        role: "scan" or "mask".

    Raises:
        VolumeError: `data` is not 3D, or its type cannot be a scan (complex, text) or a mask
            (floating point).
    """

    kind = "array"

    def __init__(self, data: Any, name: str = "array", voxel_size: VoxelSize | None = None,
                 role: str = "scan") -> None:
        shape = tuple(int(s) for s in data.shape)
        if len(shape) != 3:
            raise VolumeError(f"{name} has {len(shape)} dimensions ({'x'.join(map(str, shape))}): "
                              "choose a 3D (Z, Y, X) stack of slices.")
        source = np.dtype(data.dtype)
        super().__init__(Path(name), shape, _volume_dtype(source, role, name), voxel_size)
        self.data = data
        self.role = role

    def _read(self, z0: int, z1: int) -> np.ndarray:
        block = np.asarray(self.data[z0:z1])
        if block.dtype == self.dtype:
            return block
        if self.role == "mask" and block.dtype.kind in "iu" and block.size:
            low, high = int(block.min()), int(block.max())
            if low < 0 or high >= _LABEL_LIMIT:
                bad = low if low < 0 else high
                raise LabelError(f"{self.path} holds label {bad} (slices {z0 + 1}-{z1}): labels must be "
                                 f"whole numbers from 0 to {_LABEL_LIMIT - 1}; relabel it.")
        return block.astype(self.dtype)


def _volume_dtype(source: np.dtype, role: str, name: str) -> np.dtype:
    """The pixel type an array is read as (see ArrayVolume)."""
    if role == "mask":
        if source in MASK_DTYPES:
            return source
        if source == np.bool_:
            return np.dtype(np.uint8)
        if source.kind in "iu":
            return np.dtype(np.uint16)
        raise VolumeError(f"{name} is {source}, which a label mask cannot be: choose a labels layer "
                          "or an integer stack.")
    if source in SCAN_DTYPES:
        return source
    if source.kind in "biuf":
        return np.dtype(np.float32)
    raise VolumeError(f"{name} is {source}, which a scan cannot be: choose a grey-value image.")


# ----------------------------------------------------------------------------------------------
# Segmentation


@dataclass(frozen=True)
class SegmentStarted:
    """The model is loaded and the array's statistics are known; slices follow.

    `settings` says how chunks are cut and merged, e.g. "512 px chunks, overlap 0.25, mean
    blending", and whether those are the settings the fit validated the model with.
    """

    shape: tuple[int, int, int]
    batch: int
    device: str
    settings: str


@dataclass(frozen=True)
class ArraySegmentation:
    """Labels predicted for an array, and what they hold.

    Attributes:
        labels: (Z, Y, X) uint8 or uint16 labels, with the values DLPred writes: class i is
            `label_values[i]` (0..N-1, or the values of the masks the model was fitted on,
            such as 0/255).
        class_names: the model's class names, in class order.
        label_values: the label of each class.
        counts: voxels per class.
        model: a few lines describing the model (weights.summarize_meta).
        settings: the chunk, overlap and blending used.
    """

    labels: np.ndarray = field(repr=False, compare=False)
    class_names: tuple[str, ...]
    label_values: tuple[int, ...]
    counts: tuple[int, ...]
    model: str
    settings: str

    @property
    def fractions(self) -> list[float]:
        total = max(1, sum(self.counts))
        return [c / total for c in self.counts]


def segment_array(
    data: Any,
    weights: str | os.PathLike,
    *,
    name: str = "array",
    stop: threading.Event | None = None,
    **options: Any,
) -> Generator[Any, None, ArraySegmentation]:
    """Segment a (Z, Y, X) array with a weights file, yielding progress; returns the labels.

    The array's intensity statistics are computed over the whole array, the model's
    normalization applied with them, and the chunk, overlap and blend the options leave open
    taken from the weights (predict.with_model_settings), so the labels are those `bone
    predict` writes for the same voxels saved as a scan file. A 2D (Y, X) array is one slice.

    Args:
        data: the scan: an array-like (Z, Y, X) or (Y, X), or a Volume.
        weights: a .pth weights file written by fitting (or an .onnx file from `bone export`).
        name: what messages call the array (a layer's name).
        stop: set it to stop between batches (raises Cancelled).
        **options: PredictConfig fields that apply to one array (ARRAY_OPTIONS: chunk,
            chunk_depth, overlap, threshold, blend, batch, device, tta), with PredictConfig's
            defaults and checks.

    Yields:
        SegmentStarted, then predict.SliceProgress after each slice (with its labels as class
        indices).

    Returns:
        The ArraySegmentation; for a 2D array its labels are 2D.

    Raises:
        TypeError: an option that is not one of ARRAY_OPTIONS.
        WeightsError: not a usable weights file.
        VolumeError: an array that is not 2D or 3D, or of a type a scan cannot have.
        PredictConfigError: options that are out of range or a device that is not there.
        Cancelled: `stop` was set.
    """
    from bone_apps.core.data.normalize import compute_stats
    from bone_apps.core.io.labels import LabelMap
    from bone_apps.core.model.weights import summarize_meta
    from bone_apps.core.predict.batching import ChunkRunner, choose_batch, resolve_devices
    from bone_apps.core.predict.config import PredictConfig
    from bone_apps.core.predict.inferer import plan_chunks
    from bone_apps.core.predict.segment import load_model, segment_volume
    from bone_apps.core.predict.settings import with_model_settings

    unknown = sorted(set(options) - set(ARRAY_OPTIONS))
    if unknown:
        raise TypeError(f"segment_array() got options it does not take: {', '.join(unknown)} "
                        f"(it takes {', '.join(ARRAY_OPTIONS)})")
    flat = not isinstance(data, Volume) and len(data.shape) == 2
    if flat:
        data = np.asarray(data)[None]
    volume = data if isinstance(data, Volume) else ArrayVolume(data, name)
    # PredictConfig checks the options and holds their defaults; its scan and output are unused.
    config = PredictConfig(scans=(volume.path,), weights=weights, out=volume.path, **options)
    model, meta, spec = load_model(config.weights)
    config, validated = with_model_settings(config, meta)
    devices = resolve_devices(config.device)
    model = model.to(devices[0])
    stats = compute_stats(volume)
    plan = plan_chunks(volume.shape, spec, config.chunk, config.chunk_depth, config.overlap)
    batch = config.batch or choose_batch(model, devices, plan.input_shape, spec.classes, plan.chunks,
                                         spec.required_multiple)
    runner = ChunkRunner(model, devices, batch, config.tta)
    settings = f"{config.chunk} px chunks, overlap {config.overlap:g}, {config.blend.value} blending"
    values = LabelMap(spec.label_values or tuple(range(spec.classes)))
    labels = np.empty(volume.shape, dtype=values.value_dtype)
    written = 0

    def keep(indices: np.ndarray) -> None:
        nonlocal written
        labels[written] = indices if values.is_identity else values.to_values(indices)
        written += 1

    if stop is not None and stop.is_set():
        raise Cancelled("segmentation was stopped before the first slice.")
    yield SegmentStarted(volume.shape, runner.batch, ",".join(devices), settings)
    tally = yield from segment_volume(volume, stats, spec, runner, plan, [keep], config.threshold,
                                      config.blend, stop)
    return ArraySegmentation(
        labels=labels[0] if flat else labels, class_names=spec.class_names,
        label_values=values.values, counts=tuple(tally["counts"]),
        model=summarize_meta(meta) + validated, settings=settings)
