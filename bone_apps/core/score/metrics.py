"""Confusion matrix -> class-wise and mean IoU and Dice, with NumPy on the CPU or PyTorch.

Both back ends count integers, so they give identical matrices. The NumPy kernel encodes each
(reference, prediction) pair as one small integer and counts the codes in cache-sized blocks;
for the usual handful of classes it compares and counts instead of calling `np.bincount`,
which would first widen every voxel to a 64-bit index (several times slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.errors import LabelError

if TYPE_CHECKING:
    import torch

_BLOCK = 1 << 18  # voxels per block: the code and compare buffers stay in L2 cache
MAX_MATRIX_CLASSES = 1024  # an 8 MiB matrix; a scan's values (up to 65536) go far beyond
_COMPARE_MAX_CODES = 16  # up to 4 classes: compare-and-count beats bincount


def _code_dtype(num_classes: int) -> np.dtype:
    if num_classes * num_classes <= 256:
        return np.dtype(np.uint8)
    if num_classes * num_classes <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


def _checked_size(num_classes: int) -> int:
    """The class count, refused when its matrix would be absurd (a scan's values as labels)."""
    n = int(num_classes)
    if n > MAX_MATRIX_CLASSES:
        raise LabelError(f"{n} classes were asked for: labels this high mean a scan was given "
                         "instead of a label mask; choose the mask.")
    return n


def confusion_matrix(reference: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Count voxels per (reference label, predicted label).

    Args:
        reference, prediction: integer label arrays of the same shape, values < num_classes.
        num_classes: size of the matrix.

    Returns:
        (num_classes, num_classes) int64 array; row = reference label, column = prediction.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {prediction.shape}")
    n = _checked_size(num_classes)
    ref, pred = reference.reshape(-1), prediction.reshape(-1)
    counts = np.zeros(n * n, dtype=np.int64)
    dtype = _code_dtype(n)
    codes_buf = np.empty(_BLOCK, dtype=dtype)
    hit_buf = np.empty(_BLOCK, dtype=bool)
    for start in range(0, ref.size, _BLOCK):
        r, p = ref[start:start + _BLOCK], pred[start:start + _BLOCK]
        codes = codes_buf[:r.size]
        np.copyto(codes, r, casting="unsafe")  # widen first: r * n may not fit r's type
        np.multiply(codes, n, out=codes, casting="unsafe")
        np.add(codes, p, out=codes, casting="unsafe")
        if n * n <= _COMPARE_MAX_CODES:
            hits = hit_buf[:r.size]
            for code in range(n * n - 1):
                np.equal(codes, code, out=hits)
                counts[code] += np.count_nonzero(hits)
            counts[n * n - 1] += r.size  # the last code is what the others left
        else:
            counts += np.bincount(codes, minlength=n * n)[: n * n]
    if n * n <= _COMPARE_MAX_CODES:
        counts[n * n - 1] -= counts[: n * n - 1].sum()
    return counts.reshape(n, n)


def confusion_matrix_torch(reference: torch.Tensor, prediction: torch.Tensor,
                           num_classes: int) -> torch.Tensor:
    """The same counts as `confusion_matrix`, on the tensors' device (CUDA or CPU)."""
    import torch

    n = _checked_size(num_classes)
    codes = reference.reshape(-1).to(torch.int64) * n + prediction.reshape(-1).to(torch.int64)
    return torch.bincount(codes, minlength=n * n)[: n * n].reshape(n, n)


def max_label(array: np.ndarray) -> int:
    """Largest label in an array (0 for an empty one)."""
    return int(array.max()) if array.size else 0


@dataclass(frozen=True)
class ClassScore:
    """IoU and Dice of one class; `iou`/`dice` are None when the class is in neither volume."""

    label: int
    name: str
    iou: float | None
    dice: float | None
    reference_voxels: int
    predicted_voxels: int
    intersection: int

    @property
    def present(self) -> bool:
        return self.iou is not None


@dataclass(frozen=True)
class IoUResult:
    """Scores of a prediction against a reference.

    `mean_iou` and `mean_dice` average the classes present in either volume (background left
    out if `ignore_background`); None when no class qualifies.
    """

    classes: list[ClassScore]
    mean_iou: float | None
    mean_dice: float | None
    voxels: int
    ignore_background: bool = False
    confusion: list[list[int]] = field(default_factory=list)
    slice_mean_iou: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain data for JSON: classes, means, voxel count, confusion matrix, per-slice IoU."""
        return {
            "classes": [asdict(c) for c in self.classes],
            "mean_iou": self.mean_iou,
            "mean_dice": self.mean_dice,
            "voxels": self.voxels,
            "ignore_background": self.ignore_background,
            "confusion": self.confusion,
            "slice_mean_iou": self.slice_mean_iou,
        }


def class_names_for(num_classes: int, names: Sequence[str] | None) -> list[str]:
    """Names for labels 0..num_classes-1: the given ones, then 'class N'."""
    names = list(names or [])
    return [names[i] if i < len(names) else f"class {i}" for i in range(num_classes)]


def scores_from_confusion(
    confusion: np.ndarray, class_names: Sequence[str] | None = None,
    ignore_background: bool = False, label_values: Sequence[int] | None = None,
) -> IoUResult:
    """Per-class IoU = |R∩P| / |R∪P| and Dice = 2|R∩P| / (|R| + |P|), and their means.

    `label_values` gives the mask value of each row/column (default 0, 1, ...): it becomes the
    class's label, names the unnamed ones ("class 255"), and decides which one is background
    (value 0) for `ignore_background`.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n = confusion.shape[0]
    labels = [int(v) for v in label_values] if label_values is not None else list(range(n))
    names = [name if i < len(class_names or ()) else f"class {labels[i]}"
             for i, name in enumerate(class_names_for(n, class_names))]
    intersection = np.diag(confusion)
    reference = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    classes = []
    for k in range(n):
        inter, ref, pred = int(intersection[k]), int(reference[k]), int(predicted[k])
        union = ref + pred - inter
        iou = inter / union if union else None
        dice = 2 * inter / (ref + pred) if union else None
        classes.append(ClassScore(labels[k], names[k], iou, dice, ref, pred, inter))
    counted = [c for c in classes if c.present and not (ignore_background and c.label == 0)]
    mean_iou = float(np.mean([c.iou for c in counted])) if counted else None
    mean_dice = float(np.mean([c.dice for c in counted])) if counted else None
    return IoUResult(classes, mean_iou, mean_dice, int(confusion.sum()), ignore_background,
                     confusion.tolist())


def mean_iou_of(confusion: np.ndarray, ignore_background: bool = False) -> float | None:
    """Mean IoU of one confusion matrix over the classes present (for per-slice curves)."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    present = union > 0
    if ignore_background:
        present[0] = False
    if not present.any():
        return None
    return float(np.mean(inter[present] / union[present]))


def check_labels(array: np.ndarray, num_classes: int, where: str) -> None:
    """Raise LabelError if `array` holds a label >= num_classes."""
    top = max_label(array)
    if top >= num_classes:
        raise LabelError(
            f"{where} holds label {top}, but only {num_classes} classes (0..{num_classes - 1}) "
            "were declared: give more class names or check that this is a label mask.")
