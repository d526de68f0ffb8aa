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
from pathlib import Path

import numpy as np

from bone_apps.core.choices import Choice
from bone_apps.core.errors import BoneAppsError, Cancelled, LabelError
from bone_apps.core.io.labels import (
    MAX_LABEL_VALUES,
    check_class_names,
    too_many_values,
    value_preview,
    values_of,
)
from bone_apps.core.io.volume import Volume, check_same_shape, open_volume
from bone_apps.core.jobs.devices import ALL_GPUS, gpu_indices, parse_devices
from bone_apps.core.jobs.monitor import cuda_available_cheaply
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.score.metrics import (
    IoUResult,
    confusion_matrix,
    max_label,
    mean_iou_of,
    scores_from_confusion,
)

_PREFETCH_SLICES = 4


class Device(Choice, what="device", error=BoneAppsError):
    """Where the counting runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"



def resolve_device(device: Device | str) -> Device:
    """AUTO -> CUDA when a usable GPU is present, else CPU; a CUDA form (core/jobs/devices.py grammar:
    cuda, cuda:N, cuda:0,1, cuda:all) without one, or naming a GPU that is not there, is an error."""
    return _resolve(device)[0]


def _resolve(device: Device | str) -> tuple[Device, str]:
    """(where the counting runs, the torch device it counts on: the first GPU named)."""
    devices = parse_devices(device.value if isinstance(device, Device) else device)
    kind = Device.CPU if devices == ["cpu"] else Device.AUTO if devices == ["auto"] else Device.CUDA
    if kind is Device.CPU:
        return kind, "cpu"
    usable = cuda_available_cheaply()
    if usable:
        import torch

        usable = torch.cuda.is_available()
    if kind is Device.CUDA and not usable:
        raise BoneAppsError("no CUDA GPU is available: choose device 'cpu' or 'auto'.")
    if not usable:
        return Device.CPU, "cpu"
    count = torch.cuda.device_count()
    first = gpu_indices(devices, count)[0]
    if first >= count:
        raise BoneAppsError(f"GPU {first} does not exist ({count} GPUs): use cuda:0 to cuda:{count - 1}.")
    return Device.CUDA, "cuda" if devices in (["auto"], ["cuda"], [ALL_GPUS]) else f"cuda:{first}"


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


def _count(ref: np.ndarray, pred: np.ndarray, n: int, lut: np.ndarray | None) -> np.ndarray:
    """Confusion matrix of labels, or of lut[labels] (mask values -> class indices)."""
    if lut is not None:
        ref, pred = lut[ref], lut[pred]
    return confusion_matrix(ref, pred, n)


class _CpuCounter:
    """Confusion matrix of one slice, split over the cores."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self, ref: np.ndarray, pred: np.ndarray, n: int,
                 lut: np.ndarray | None = None) -> np.ndarray:
        if self.pool is None or ref.size < 1 << 20:
            return _count(ref, pred, n, lut)
        ref, pred = ref.reshape(-1), pred.reshape(-1)
        bounds = np.linspace(0, ref.size, self.threads + 1).astype(int)
        parts = [self.pool.submit(_count, ref[a:b], pred[a:b], n, lut)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        return sum(part.result() for part in parts)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class _CudaCounter:
    def __init__(self, gpu: str = "cuda") -> None:
        import torch

        self.torch = torch
        self.gpu = gpu

    def __call__(self, ref: np.ndarray, pred: np.ndarray, n: int,
                 lut: np.ndarray | None = None) -> np.ndarray:
        from bone_apps.core.score.metrics import confusion_matrix_torch

        torch = self.torch
        if lut is not None:
            ref, pred = lut[ref], lut[pred]
        r = torch.from_numpy(ref.astype(np.int32, copy=False)).to(self.gpu, non_blocking=True)
        p = torch.from_numpy(pred.astype(np.int32, copy=False)).to(self.gpu, non_blocking=True)
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
        class_names: names of labels 0, 1, ...; they also declare the classes. Masks holding
            other values (e.g. 0/255 with two names) have the values present named in order.
        num_classes: declare the classes without naming them. With neither, every label found
            counts as a class of its own: labels 0..highest when all are below 64, otherwise
            only the values present (0/255 masks give two classes, labelled 0 and 255).
        ignore_background: leave label 0 out of the means.
        device: AUTO, CPU or CUDA, or any device string of core/jobs/devices.py (a GPU list or
            cuda:all counts on the first GPU).
        stop: set it to stop between slices (raises Cancelled).

    Raises:
        VolumeError / ShapeMismatchError: unreadable stacks or different shapes.
        LabelError: labels that do not match the declared classes, or a stack with more than
            64 distinct values (a scan, not a label mask), refused before any matrix is sized.
    """
    ref = reference if isinstance(reference, Volume) else open_volume(reference, role="mask")
    pred = prediction if isinstance(prediction, Volume) else open_volume(prediction, role="mask")
    check_same_shape(ref, pred, what="prediction", of="reference")
    if class_names:
        class_names = check_class_names(class_names)
    declared = num_classes if num_classes is not None else (len(class_names) if class_names else None)
    # Labels below `small` are class indices (absent ones between them are listed, as a model's
    # classes are); a slice with a higher value (e.g. 0/255 masks) is counted by the values it
    # holds, so only the values present become classes.
    small = declared or MAX_LABEL_VALUES
    n = declared or 1
    total = ref.shape[0]
    stop = stop or threading.Event()
    where, gpu = _resolve(device)
    counter = _CudaCounter(gpu) if where is Device.CUDA else _CpuCounter(os.cpu_count() or 1)
    slices: queue.Queue = queue.Queue(maxsize=_PREFETCH_SLICES)
    halt_reader = threading.Event()
    reader = threading.Thread(target=_reader, args=([(ref, pred)], slices, halt_reader),
                              name="iou-reader", daemon=True)
    reader.start()
    # Per slice: (the label value of each row/column, confusion matrix).
    per_slice: list[tuple[tuple[int, ...], np.ndarray]] = []
    found = {"reference": set(), "prediction": set()}  # values of slices counted by value
    known: list[int] = []  # sorted values of those slices together
    lut = np.zeros(1 << 16, dtype=np.uint8)  # value -> index in `known`; len(known): unseen
    try:
        yield ScoreProgress(0, total)
        while True:
            item = slices.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            z, ref_slice, pred_slice = item
            top = max(max_label(ref_slice), max_label(pred_slice))
            if top < small:
                n = max(n, top + 1)
                per_slice.append((tuple(range(n)), counter(ref_slice, pred_slice, n)))
            else:
                # Values not seen yet count in one extra row/column; when there are any,
                # they join `known` and the slice is counted again.
                matrix = counter(ref_slice, pred_slice, len(known) + 1, lut)
                if matrix[-1].any() or matrix[:, -1].any():
                    for role, volume, array in (("reference", ref, ref_slice),
                                                ("prediction", pred, pred_slice)):
                        found[role] |= set(values_of(array).tolist())
                        problem = too_many_values(f"{role} {volume.path}", sorted(found[role]),
                                                  complete=z + 1 == total)
                        if problem:  # a scan: refused before any matrix is sized from its values
                            raise LabelError(problem + ".")
                    known = sorted(found["reference"] | found["prediction"])
                    if len(known) > MAX_LABEL_VALUES:
                        raise LabelError(too_many_values(
                            f"reference {ref.path} and prediction {pred.path} together", known,
                            complete=z + 1 == total) + ".")
                    lut[:] = len(known)
                    lut[known] = np.arange(len(known))
                    matrix = counter(ref_slice, pred_slice, len(known) + 1, lut)
                per_slice.append((tuple(known), matrix[:-1, :-1]))
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
    values = sorted(set(range(n)) | set(known))
    if declared is not None and values[-1] >= declared:
        present = {v for labels, matrix in per_slice for v, row, col in
                   zip(labels, matrix.sum(axis=1), matrix.sum(axis=0)) if row or col}
        values = _declared_values(sorted(present), declared, found, ref, pred)
    position = {v: i for i, v in enumerate(values)}
    confusion = np.zeros((len(values), len(values)), dtype=np.int64)
    slice_iou = []
    for labels, matrix in per_slice:
        # Labels left out of `values` (declared classes not present) have empty rows/columns.
        keep = [i for i, v in enumerate(labels) if v in position]
        index = [position[labels[i]] for i in keep]
        confusion[np.ix_(index, index)] += matrix[np.ix_(keep, keep)]
        slice_iou.append(mean_iou_of(matrix, ignore_background and labels[0] == 0))
    result = scores_from_confusion(confusion, class_names, ignore_background, values)
    return IoUResult(result.classes, result.mean_iou, result.mean_dice, result.voxels,
                     ignore_background, result.confusion, slice_iou)


def _declared_values(present: list[int], declared: int, found: dict, ref: Volume,
                     pred: Volume) -> list[int]:
    """The classes when labels reach past the declared count: the values present, one per
    declared class (e.g. names background, bone for 0/255 masks); LabelError otherwise."""
    if len(present) == declared:
        return present
    role, volume = ("prediction", pred) if max(found["prediction"], default=-1) >= declared else (
        "reference", ref)
    extra = [v for v in sorted(found[role]) if v >= declared]
    raise LabelError(
        f"{role} {volume.path} holds label {value_preview(extra)}, but only {declared} classes "
        f"(0..{declared - 1}) were declared: give one class name per label value "
        f"({value_preview(present)}) or check that this is a label mask.")


def compute_iou(reference: str | os.PathLike | Volume, prediction: str | os.PathLike | Volume,
                **options: object) -> IoUResult:
    """Run `score_stacks` to the end and return its result."""
    return run_to_end(score_stacks(reference, prediction, **options))


def write_result_json(result: IoUResult, path: str | os.PathLike, reference: str = "",
                      prediction: str = "", overwrite: bool = False) -> Path:
    """Write the scores as JSON, atomically and tagged as ours (outputs.write_json_file).

    Raises:
        OutputExistsError: `path` exists and `overwrite` is not set, or bone_apps did not write it.
        OutputWriteError: the disk is full or the folder cannot be written.
    """
    from bone_apps.core.io.outputs import write_json_file

    data = {"reference": str(reference), "prediction": str(prediction), **result.to_dict()}
    return write_json_file(Path(path), data, overwrite=overwrite)


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
