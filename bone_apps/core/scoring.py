"""Score a predicted label stack against a reference, streaming slice by slice.

A reader thread keeps a few slices of both stacks ahead of the counting, and counting splits
each slice over the CPU cores (NumPy releases the GIL), so scoring a stack costs little more
than reading it. On CUDA the counts are made with PyTorch on the GPU instead.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from bone_apps.core.choices import parse_choice
from bone_apps.core.errors import BoneAppsError, Cancelled
from bone_apps.core.metrics import (
    IoUResult,
    check_labels,
    confusion_matrix,
    max_label,
    mean_iou_of,
    scores_from_confusion,
)
from bone_apps.core.monitor import cuda_available_cheaply
from bone_apps.core.volume import Volume, check_same_shape, open_volume

_PREFETCH_SLICES = 4


class Device(str, Enum):
    """Where the counting runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    @classmethod
    def parse(cls, text: str) -> Device:
        """The member named `text`; BoneAppsError listing the valid names otherwise."""
        return parse_choice(cls, text, "device", BoneAppsError)


def resolve_device(device: Device | str) -> Device:
    """AUTO -> CUDA when a usable GPU is present, else CPU; CUDA without one is an error."""
    device = Device.parse(device) if isinstance(device, str) else device
    if device is Device.CPU:
        return device
    usable = cuda_available_cheaply()
    if usable:
        import torch

        usable = torch.cuda.is_available()
    if device is Device.CUDA and not usable:
        raise BoneAppsError("no CUDA GPU is available: choose device 'cpu' or 'auto'.")
    return Device.CUDA if usable else Device.CPU


@dataclass(frozen=True)
class ScoreProgress:
    """Slices counted so far out of the total."""

    done: int
    total: int


def _reader(pairs: Sequence[tuple[Volume, Volume]], out: queue.Queue,
            stop: threading.Event) -> None:
    """Put (z, reference slice, predicted slice) on `out`, then None; an exception instead on error."""
    try:
        ref, pred = pairs[0]
        for z in range(ref.shape[0]):
            if stop.is_set():
                return
            out.put((z, ref.read_slice(z), pred.read_slice(z)))
        out.put(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        out.put(exc)


class _CpuCounter:
    """Confusion matrix of one slice, split over the cores."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self, ref: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
        if self.pool is None or ref.size < 1 << 20:
            return confusion_matrix(ref, pred, n)
        ref, pred = ref.reshape(-1), pred.reshape(-1)
        bounds = np.linspace(0, ref.size, self.threads + 1).astype(int)
        parts = [self.pool.submit(confusion_matrix, ref[a:b], pred[a:b], n)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        return sum(part.result() for part in parts)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class _CudaCounter:
    def __init__(self) -> None:
        import torch

        self.torch = torch

    def __call__(self, ref: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
        from bone_apps.core.metrics import confusion_matrix_torch

        torch = self.torch
        r = torch.from_numpy(ref.astype(np.int32, copy=False)).to("cuda", non_blocking=True)
        p = torch.from_numpy(pred.astype(np.int32, copy=False)).to("cuda", non_blocking=True)
        return confusion_matrix_torch(r, p, n).cpu().numpy()

    def close(self) -> None:
        pass


def score_stacks(
    reference: str | os.PathLike | Volume,
    prediction: str | os.PathLike | Volume,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    ignore_background: bool = False,
    device: Device | str = Device.AUTO,
    stop: threading.Event | None = None,
) -> Generator[ScoreProgress, None, IoUResult]:
    """Score `prediction` against `reference`, yielding progress; returns the IoUResult.

    Args:
        reference, prediction: label stacks (folders of TIFF slices or multi-page TIFFs).
        class_names: names of labels 0, 1, ...; they also declare the classes.
        num_classes: declare the classes without naming them. With neither, every label found
            counts as a class of its own.
        ignore_background: leave label 0 out of the means.
        device: AUTO, CPU or CUDA.
        stop: set it to stop between slices (raises Cancelled).

    Raises:
        VolumeError / ShapeMismatchError: unreadable stacks or different shapes.
        LabelError: a label outside the declared classes.
    """
    ref = reference if isinstance(reference, Volume) else open_volume(reference, role="mask")
    pred = prediction if isinstance(prediction, Volume) else open_volume(prediction, role="mask")
    check_same_shape(ref, pred, what="prediction")
    declared = num_classes if num_classes is not None else (len(class_names) if class_names else None)
    n = declared or 1
    total = ref.shape[0]
    stop = stop or threading.Event()
    counter = _CudaCounter() if resolve_device(device) is Device.CUDA else _CpuCounter(os.cpu_count() or 1)
    slices: queue.Queue = queue.Queue(maxsize=_PREFETCH_SLICES)
    halt_reader = threading.Event()
    reader = threading.Thread(target=_reader, args=([(ref, pred)], slices, halt_reader),
                              name="iou-reader", daemon=True)
    reader.start()
    per_slice: list[tuple[int, np.ndarray]] = []
    try:
        yield ScoreProgress(0, total)
        while True:
            item = slices.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            z, ref_slice, pred_slice = item
            if declared is not None:
                check_labels(ref_slice, declared, f"reference {ref.path} slice {ref.slice_names[z]}")
                check_labels(pred_slice, declared, f"prediction {pred.path} slice {pred.slice_names[z]}")
            else:
                n = max(n, max_label(ref_slice) + 1, max_label(pred_slice) + 1)
            per_slice.append((n, counter(ref_slice, pred_slice, n)))
            if stop.is_set():
                raise Cancelled("scoring was stopped before the last slice.")
            yield ScoreProgress(z + 1, total)
    finally:
        halt_reader.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                slices.get_nowait()
            except queue.Empty:
                reader.join(timeout=0.05)
        counter.close()
    confusion = np.zeros((n, n), dtype=np.int64)
    slice_iou = []
    for size, matrix in per_slice:
        confusion[:size, :size] += matrix
        slice_iou.append(mean_iou_of(matrix, ignore_background))
    result = scores_from_confusion(confusion, class_names, ignore_background)
    return IoUResult(result.classes, result.mean_iou, result.mean_dice, result.voxels,
                     ignore_background, result.confusion, slice_iou)


def compute_iou(reference: str | os.PathLike | Volume, prediction: str | os.PathLike | Volume,
                **options: object) -> IoUResult:
    """Run `score_stacks` to the end and return its result."""
    return run_to_end(score_stacks(reference, prediction, **options))


def run_to_end(job: Generator) -> object:
    """Drain a core job generator and return its return value."""
    while True:
        try:
            next(job)
        except StopIteration as done:
            return done.value


def write_result_json(result: IoUResult, path: str | os.PathLike, reference: str = "",
                      prediction: str = "") -> Path:
    """Write the scores as JSON, atomically."""
    import json

    path = Path(path)
    data = {"reference": str(reference), "prediction": str(prediction), **result.to_dict()}
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)
    return path


def result_csv(result: IoUResult) -> str:
    """The results table as CSV text (class rows, then the means)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "name", "iou", "dice", "reference_voxels", "predicted_voxels",
                     "intersection"])
    for c in result.classes:
        writer.writerow([c.label, c.name, "" if c.iou is None else f"{c.iou:.6f}",
                         "" if c.dice is None else f"{c.dice:.6f}", c.reference_voxels,
                         c.predicted_voxels, c.intersection])
    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    writer.writerow(["mean", "", fmt(result.mean_iou), fmt(result.mean_dice), "", "", ""])
    return buffer.getvalue()
