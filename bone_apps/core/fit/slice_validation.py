"""Validation the way prediction runs: whole validation slices through the prediction inferer.

Patch-level validation scores the network on training-sized patches; a user gets what the
prediction inferer makes of whole slices (chunks, overlap, blending, threshold). Fitting
therefore also scores the validation scans through `predict.segment_volume` with the settings
that prediction will use by default, picks the best epoch on that score, and at the end checks
whether the fitted model's labels depend on the window size: when windows of the training
patch size and the default windows disagree, the weights record patch-sized windows as the
safe default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.data.normalize import ScanStats
from bone_apps.core.io.labels import LabelMap
from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.core.predict.windows import BlendMode
from bone_apps.core.score.metrics import confusion_matrix

DEFAULT_CHUNK = 512  # the paper's prediction chunk
DEFAULT_OVERLAP = 0.25
PATCH_OVERLAP = 0.5  # with Gaussian blending when windows are only the training patch's size
DEFAULT_THRESHOLD = 0.5
MIN_AGREEMENT = 0.99  # voxels labelled alike by patch-sized and default windows


@dataclass(frozen=True)
class InferenceSettings:
    """How prediction cuts and merges a scan: chunk edge, overlap and blending."""

    chunk: int = DEFAULT_CHUNK
    overlap: float = DEFAULT_OVERLAP
    blend: str = BlendMode.MEAN.value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> InferenceSettings:
        """The settings a weights file recommends (the paper's for files that say nothing)."""
        data = meta.get("inference") or {}
        return cls(int(data.get("chunk") or DEFAULT_CHUNK),
                   float(data.get("overlap", DEFAULT_OVERLAP)),
                   BlendMode.parse(data.get("blend") or BlendMode.MEAN.value).value)

    @classmethod
    def patch_sized(cls, patch: int) -> InferenceSettings:
        """Windows the size of the training patches, half-overlapping, Gaussian-blended."""
        return cls(int(patch), PATCH_OVERLAP, BlendMode.GAUSSIAN.value)

    def text(self) -> str:
        return f"{self.chunk} px chunks, overlap {self.overlap:g}, {self.blend} blending"


@dataclass(frozen=True)
class ValidationScan:
    """One validation scan as slice-level validation needs it."""

    scan: Path
    mask: Path
    stats: ScanStats


class SliceBlock:
    """Slices z0..z1-1 of a volume, looking like a whole volume (what segment_volume reads)."""

    def __init__(self, volume: Volume, z0: int, z1: int) -> None:
        self.volume, self.z0 = volume, z0
        self.shape = (z1 - z0, *volume.shape[1:])
        self.dtype = volume.dtype

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        return self.volume.read_slice(self.z0 + z, out)


def central_block(depth: int, max_slices: int) -> tuple[int, int]:
    """(z0, z1) of the central `max_slices` slices (all slices when 0 or more than the depth)."""
    if max_slices <= 0 or max_slices >= depth:
        return 0, depth
    z0 = (depth - max_slices) // 2
    return z0, z0 + max_slices


@dataclass(frozen=True)
class SliceScores:
    """Slice-level validation of one set of inference settings."""

    settings: InferenceSettings
    confusion: np.ndarray  # (classes, classes), rows = reference
    agreement: float | None = None  # fraction of voxels labelled as by the first settings

    @property
    def per_class_iou(self) -> list[float]:
        """IoU per class (NaN for a class absent from both reference and prediction)."""
        c = self.confusion.astype(np.float64)
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return [float(v) for v in np.where(union > 0, inter / union, np.nan)]

    @property
    def mean_iou(self) -> float:
        values = [v for v in self.per_class_iou if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")


def score_slices(
    model, device: str, meta: dict, scans: list[ValidationScan], settings: list[InferenceSettings],
    max_slices: int = 0, label_map: LabelMap | None = None, batch: int | None = None,
) -> list[SliceScores]:
    """Predict the validation scans' central blocks with each of `settings` (in lockstep, slice
    by slice, nothing kept but confusion matrices) and score them against their masks.

    Args:
        model: the network, on `device`, in eval mode.
        device: torch device name.
        meta: the weights metadata describing the network (predict.ModelSpec.from_meta).
        scans: validation scans with their masks and statistics.
        settings: inference settings to score; the first is the reference for `agreement`.
        max_slices: slices per scan (the central block); 0 for all.
        label_map: maps the masks' values to classes (None: the values are the classes).
        batch: chunks per forward pass (None: chosen from memory as prediction does).
    """
    from bone_apps.core.predict.segment import (
        ChunkRunner,
        ModelSpec,
        choose_batch,
        plan_chunks,
        segment_volume,
    )

    spec = ModelSpec.from_meta(meta)
    classes = spec.classes
    confusions = [np.zeros((classes, classes), dtype=np.int64) for _ in settings]
    same = [0 for _ in settings]
    voxels = 0
    for item in scans:
        scan = open_volume(item.scan)
        mask = open_volume(item.mask, role="mask")
        z0, z1 = central_block(scan.shape[0], max_slices)
        block = SliceBlock(scan, z0, z1)
        gens = []
        for s in settings:
            plan = plan_chunks(block.shape, spec, s.chunk, None, s.overlap)
            chunk_batch = batch or choose_batch(model, [device], plan.input_shape, classes,
                                                plan.chunks, spec.required_multiple)
            runner = ChunkRunner(model, [device], chunk_batch)
            gens.append(segment_volume(block, item.stats, spec, runner, plan, [lambda _labels: None],
                                       DEFAULT_THRESHOLD, BlendMode.parse(s.blend)))
        firsts = [next(g) for g in gens]  # the "0 slices done" records
        del firsts
        for z in range(block.shape[0]):
            reference = mask.read_slice(z0 + z)
            if label_map is not None:
                reference = label_map.to_index(reference)
            labels = [next(g).labels for g in gens]
            for k, predicted in enumerate(labels):
                confusions[k] += confusion_matrix(reference, predicted.astype(np.int64), classes)
                same[k] += int(np.count_nonzero(predicted == labels[0]))
            voxels += reference.size
        for g in gens:
            g.close()
        scan.close()
        mask.close()
    return [SliceScores(s, c, same[k] / max(1, voxels)) for k, (s, c) in enumerate(zip(settings, confusions))]
