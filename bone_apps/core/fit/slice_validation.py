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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.data.normalize import ScanStats
from bone_apps.core.io.labels import LabelMap
from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.core.predict.settings import InferenceSettings
from bone_apps.core.predict.windows import BlendMode
from bone_apps.core.score.metrics import confusion_matrix

if TYPE_CHECKING:
    from bone_apps.core.fit.plan import RunPlan
    from bone_apps.core.model.spec import ModelSpec

DEFAULT_THRESHOLD = 0.5
MIN_AGREEMENT = 0.99  # voxels labelled alike by patch-sized and default windows


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
    model, device: str, spec: ModelSpec, scans: list[ValidationScan], settings: list[InferenceSettings],
    max_slices: int = 0, label_map: LabelMap | None = None, batch: int | None = None,
) -> list[SliceScores]:
    """Predict the validation scans' central blocks with each of `settings` (in lockstep, slice
    by slice, nothing kept but confusion matrices) and score them against their masks.

    Args:
        model: the network, on `device`, in eval mode.
        device: torch device name.
        spec: the description of the network.
        scans: validation scans with their masks and statistics.
        settings: inference settings to score; the first is the reference for `agreement`.
        max_slices: slices per scan (the central block); 0 for all.
        label_map: maps the masks' values to classes (None: the values are the classes).
        batch: chunks per forward pass (None: chosen from memory as prediction does).
    """
    from bone_apps.core.predict.batching import ChunkRunner, choose_batch
    from bone_apps.core.predict.inferer import plan_chunks
    from bone_apps.core.predict.segment import segment_volume

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


def score_run(plan: RunPlan, model, settings: list[InferenceSettings]) -> list[SliceScores]:
    """Slice-level validation of a run's `model` on its validation scans with each of
    `settings` (the model is put back in the mode it was in)."""
    import torch

    infos = plan.summary.by_id()
    scans = [ValidationScan(infos[i].pair.scan, infos[i].pair.mask, infos[i].stats)
             for i in plan.split.val]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return score_slices(model, str(plan.devices.device), plan.spec, scans, settings,
                                plan.config.val_slices, plan.summary.label_map)
    finally:
        model.train(was_training)
