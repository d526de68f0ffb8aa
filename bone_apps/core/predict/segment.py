"""Prediction (DLPred): label stacks from scans and a weights file, streamed in bounded memory.

`predict(config)` is a generator: it yields small progress records and returns a
PredictReport. For each scan it computes the scan's intensity statistics (in parallel worker
processes, before anything else), then walks the scan as a moving slab: slices are read and
normalized once, cut into overlapping chunks (2D, 2.5D with neighbouring slices as channels,
or 3D slabs), run through the network in batches that may span several slices, and their
softmax probabilities merged as a true weighted average (windows.SliceAccumulator). Each
slice is labelled (argmax, then the confidence threshold) and written the moment no chunk
still to come touches it, so neither the probability volume nor the label volume ever exists
in memory. Outputs are written under temporary names and renamed when complete.

Under `torchrun` each process predicts its share of the scans and rank 0 writes the combined
report.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.errors import (
    BoneAppsError,
    Cancelled,
    PredictConfigError,
    VolumeError,
    WeightsError,
)
from bone_apps.core.io import formats
from bone_apps.core.io.formats import VolumeFormat
from bone_apps.core.io.labels import LabelMap, check_class_names
from bone_apps.core.io.outputs import check_target, make_dirs, write_json_file
from bone_apps.core.io.volume import Volume, open_volume, volume_id, volumes_in
from bone_apps.core.jobs.devices import gpu_indices, parse_devices
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.windows import (
    AxisPlan,
    BlendMode,
    SliceAccumulator,
    plan_axis,
    window_weights,
)

if TYPE_CHECKING:
    import torch

    from bone_apps.core.data.normalize import ScanStats
    from bone_apps.core.predict.cleanup import CleanOptions, CleanStep

HISTOGRAM_BINS = 10
# On a CPU a forward pass saturates the cores at about a quarter megapixel; larger batches only
# cost memory and cache (measured: 512 px chunks run fastest one at a time), so the automatic
# CPU batch gathers small chunks up to this many pixels and no more.
CPU_PIXELS_PER_PASS = 512 * 512
# Share of the available RAM (CPU) or free GPU memory (CUDA) the automatic batch may fill.
CPU_MEMORY_FRACTION = 0.25
GPU_MEMORY_FRACTION = 0.8
MAX_AUTO_BATCH = 256



def scans_in(root: str | os.PathLike) -> list[Path]:
    """Every scan of a dataset folder, in natural order: the volumes in ROOT/scans (folders of
    TIFF slices, OME-Zarr stores, TIFF, NIfTI and HDF5 files; volume.volumes_in)."""
    folder = Path(root).expanduser() / "scans"
    if not folder.is_dir():
        raise VolumeError(f"{folder} does not exist: choose a dataset folder that holds a scans/ folder.")
    scans = volumes_in(folder)
    if not scans:
        raise VolumeError(f"{folder} holds no scans: put one folder of TIFF slices (or one TIFF, "
                          "OME-Zarr, NIfTI or HDF5 file) per scan there.")
    return scans


scan_id = volume_id  # the name a scan's outputs get


# ----------------------------------------------------------------------------------------------
# Progress records and results


@dataclass(frozen=True)
class StatsProgress:
    """Scans whose intensity statistics are known, out of all scans of this process."""

    done: int
    total: int


@dataclass(frozen=True)
class ScanStarted:
    """Prediction of one scan begins (index counts from 0 over all scans of the run)."""

    index: int
    scans: int
    scan: Path
    output: Path
    shape: tuple[int, int, int]
    batch: int
    device: str


@dataclass(frozen=True)
class SliceProgress:
    """Slices of the current scan written so far; `labels` is the (Y, X) slice just written."""

    index: int
    done: int
    total: int
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ScanCleaning:
    """Every slice of the current scan is labelled; the stack is being cleaned before it is saved."""

    index: int
    output: Path


@dataclass(frozen=True)
class ScanResult:
    """What prediction found in one scan, and what it cost.

    counts are voxels per class in the saved labels (after the threshold, and after the
    clean-up when there was one); confidence_sum is the sum of winning probabilities;
    reassigned counts voxels whose non-background winner fell below the threshold; histogram
    counts winning probabilities in 10 bins over [0, 1]. With a clean-up, counts_before_clean
    holds the counts before it and clean_steps what each of its operations changed.
    """

    scan: str
    output: str
    probabilities: tuple[str, ...]
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    confidence_sum: float
    reassigned: int
    histogram: tuple[int, ...]
    wall_s: float
    model_s: float
    batch: int
    window: tuple[int, ...]  # (D, H, W) of a chunk's output region
    chunks: int
    peak_open_slices: int
    peak_cached_slices: int
    rank: int = 0  # the torchrun process that predicted it
    counts_before_clean: tuple[int, ...] | None = None
    clean_steps: tuple[CleanStep, ...] = ()

    @property
    def voxels(self) -> int:
        return int(sum(self.counts))

    @property
    def clean_change(self) -> list[int] | None:
        """Voxels each class gained (+) or lost (-) in the clean-up; None without one."""
        if self.counts_before_clean is None:
            return None
        return [int(a - b) for a, b in zip(self.counts, self.counts_before_clean)]

    @property
    def fractions(self) -> list[float]:
        return [c / max(1, self.voxels) for c in self.counts]

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / max(1, self.voxels)

    @property
    def reassigned_fraction(self) -> float:
        return self.reassigned / max(1, self.voxels)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(voxels=self.voxels, fractions=self.fractions, mean_confidence=self.mean_confidence,
                    reassigned_fraction=self.reassigned_fraction, clean_change=self.clean_change)
        data["clean_steps"] = [asdict(step) for step in self.clean_steps]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ScanResult:
        names = [f.name for f in cls.__dataclass_fields__.values() if f.name in data]
        values = {k: tuple(data[k]) if isinstance(data[k], list) else data[k] for k in names}
        if values.get("clean_steps"):
            from bone_apps.core.predict.cleanup import CleanStep

            values["clean_steps"] = tuple(CleanStep(**step) for step in values["clean_steps"])
        return cls(**values)


@dataclass(frozen=True)
class ScanFinished:
    """One scan's label stack is complete and saved."""

    index: int
    result: ScanResult


PredictEvent = StatsProgress | ScanStarted | SliceProgress | ScanCleaning | ScanFinished


def _gb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


@dataclass(frozen=True)
class PredictReport:
    """The run's results: per-scan results, their totals, benchmarks and the model's metadata.

    In a torchrun job, rank 0's report holds every scan; the other ranks' hold their own.
    """

    scans: tuple[ScanResult, ...]
    class_names: tuple[str, ...]
    threshold: float
    meta_summary: str
    meta: dict
    config: dict
    wall_s: float
    model_s: float
    peak_rss_bytes: int
    peak_vram_bytes: int | None
    gpu_utilization: float | None
    device: str
    batch: int
    world_size: int = 1
    rank: int = 0

    @property
    def counts(self) -> list[int]:
        return [int(sum(s.counts[c] for s in self.scans)) for c in range(len(self.class_names))]

    @property
    def voxels(self) -> int:
        return int(sum(self.counts))

    @property
    def fractions(self) -> list[float]:
        return [c / max(1, self.voxels) for c in self.counts]

    @property
    def mean_confidence(self) -> float:
        return sum(s.confidence_sum for s in self.scans) / max(1, self.voxels)

    @property
    def reassigned_fraction(self) -> float:
        return sum(s.reassigned for s in self.scans) / max(1, self.voxels)

    @property
    def histogram(self) -> list[int]:
        return [int(sum(s.histogram[b] for s in self.scans)) for b in range(HISTOGRAM_BINS)]

    @property
    def clean_change(self) -> list[int] | None:
        """Voxels each class gained (+) or lost (-) in the clean-up of every scan; None without one."""
        changes = [s.clean_change for s in self.scans if s.clean_change is not None]
        if not changes:
            return None
        return [int(sum(change[c] for change in changes)) for c in range(len(self.class_names))]

    def clean_summary(self) -> dict | None:
        """The clean-up's options and what it changed over all scans; None when it was off."""
        change = self.clean_change
        if change is None:
            return None
        before = [int(sum((s.counts_before_clean or s.counts)[c] for s in self.scans))
                  for c in range(len(self.class_names))]
        return {"options": self.config.get("clean"), "counts_before": before, "change": change,
                "voxels_changed": int(sum(step.voxels for s in self.scans for step in s.clean_steps))}

    def to_dict(self) -> dict:
        return {
            "scans": [s.to_dict() for s in self.scans],
            "totals": {
                "class_names": list(self.class_names), "counts": self.counts, "voxels": self.voxels,
                "fractions": self.fractions, "mean_confidence": self.mean_confidence,
                "reassigned_fraction": self.reassigned_fraction, "threshold": self.threshold,
                "histogram": self.histogram,
                "histogram_edges": [b / HISTOGRAM_BINS for b in range(HISTOGRAM_BINS + 1)],
                "clean": self.clean_summary(),
            },
            "benchmark": {
                "wall_s": self.wall_s, "model_s": self.model_s, "peak_rss_bytes": self.peak_rss_bytes,
                "peak_vram_bytes": self.peak_vram_bytes, "gpu_utilization": self.gpu_utilization,
                "device": self.device, "batch": self.batch, "world_size": self.world_size,
            },
            "model": {"summary": self.meta_summary, "meta": self.meta},
            "config": self.config,
        }

    def text(self) -> str:
        """The report as a few readable lines (what the console and the window show)."""
        lines = []
        for s in self.scans:
            z, y, x = s.shape
            lines.append(f"{s.scan} -> {s.output}: {z}x{y}x{x} voxels in {s.wall_s:.1f} s")
        share = ", ".join(f"{name} {100 * f:.2f} % ({c:,})"
                          for name, f, c in zip(self.class_names, self.fractions, self.counts))
        lines.append(f"classes: {share}")
        clean = self.clean_summary()
        if clean is not None:
            from bone_apps.core.predict.cleanup import CleanOptions

            moved = ", ".join(f"{name} {delta:+,}" for name, delta in zip(self.class_names, clean["change"])
                              if delta)
            what = CleanOptions.from_dict(clean["options"] or {}).describe()
            lines.append(f"clean-up ({what}): {clean['voxels_changed']:,} voxels changed"
                         + (f" ({moved})" if moved else ""))
        lines.append(f"confidence: mean winning probability {self.mean_confidence:.4f}; "
                     f"{100 * self.reassigned_fraction:.2f} % of voxels reassigned to background "
                     f"(threshold {self.threshold:g})")
        total = max(1, self.voxels)
        bins = " ".join(f"{100 * h / total:.1f}" for h in self.histogram)
        lines.append(f"winning probability histogram (% of voxels in 0-0.1 ... 0.9-1): {bins}")
        util = "-" if self.gpu_utilization is None else f"{self.gpu_utilization:.0f} %"
        lines.append(f"benchmark: wall {self.wall_s:.1f} s, model {self.model_s:.1f} s, peak RAM "
                     f"{_gb(self.peak_rss_bytes)}, peak VRAM {_gb(self.peak_vram_bytes)}, GPU use {util}, "
                     f"device {self.device}, batch {self.batch}"
                     + (f", {self.world_size} processes" if self.world_size > 1 else ""))
        lines.extend(self.meta_summary.splitlines())
        return "\n".join(lines)


def write_report_json(report: PredictReport, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the report as JSON, atomically and tagged as ours (outputs.write_json_file).

    Missing parent folders are created.

    Raises:
        OutputExistsError: `path` exists and `overwrite` is not set, or bone_apps did not write it.
        OutputWriteError: the disk is full or the folder cannot be written.
    """
    path = Path(path).expanduser()
    make_dirs(path.parent)
    return write_json_file(path, report.to_dict(), overwrite=overwrite)


# ----------------------------------------------------------------------------------------------
# The model as the weights describe it


@dataclass(frozen=True)
class ModelSpec:
    """What prediction needs to know about a network, from its weights' metadata."""

    dims: str
    in_channels: int
    classes: int
    class_names: tuple[str, ...]
    context: int
    patch_depth: int
    norm: str
    required_multiple: int
    label_values: tuple[int, ...] | None = None  # mask value of class 0, 1, ... (None: the same)

    @classmethod
    def from_meta(cls, meta: dict, source: str | os.PathLike = "the weights file") -> ModelSpec:
        """Check and read the metadata; WeightsError naming `source` when it does not add up."""
        from bone_apps.core.data.normalize import NormMethod

        try:
            dims = str(meta["dims"])
            spec = cls(
                dims=dims, in_channels=int(meta["in_channels"]), classes=int(meta["classes"]),
                class_names=tuple(str(n) for n in meta["class_names"]),
                context=int(meta.get("context") or 0), patch_depth=int(meta.get("patch_depth") or 1),
                norm=NormMethod.parse(meta["norm"]).value,
                required_multiple=int(meta.get("required_multiple") or 32),
                label_values=_label_values(meta))
            check_class_names(spec.class_names, WeightsError, f"the class names of {source}")
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError, BoneAppsError) as exc:
            raise WeightsError(f"{source} has unusable metadata ({exc}): fit the model again "
                               "with bone fit.") from None
        problem = None
        if dims not in ("2d", "2.5d", "3d"):
            problem = f"dims {dims!r} is not 2d, 2.5d or 3d"
        elif spec.classes < 2 or len(spec.class_names) != spec.classes:
            problem = f"{spec.classes} classes but {len(spec.class_names)} class names"
        elif dims == "2.5d" and spec.in_channels != 2 * spec.context + 1:
            problem = f"{spec.in_channels} input channels for {spec.context} slices of context"
        elif dims != "2.5d" and spec.in_channels != 1:
            problem = f"{spec.in_channels} input channels for a {dims} model"
        elif spec.required_multiple < 1 or spec.patch_depth < 1:
            problem = "a non-positive size"
        if problem:
            raise WeightsError(f"{source} has inconsistent metadata ({problem}): fit the model again "
                               "with bone fit.")
        return spec


def _label_values(meta: dict) -> tuple[int, ...] | None:
    """The mask values predictions are written with (meta["label_values"]); None: 0..N-1."""
    label_map = LabelMap.from_dict(meta, int(meta["classes"]))
    return None if label_map is None or label_map.is_identity else label_map.values


def load_model(path: Path) -> tuple[torch.nn.Module, dict, ModelSpec]:
    """Rebuild the network a weights file describes (never downloading) and load its parameters.

    An .onnx file written by `bone export` gives a module that runs the network in onnxruntime
    (core/export/runtime.py), with the metadata the file carries.
    """
    from bone_apps.core.model.models import model_from_meta
    from bone_apps.core.model.weights import load_weights

    if Path(path).suffix.lower() == ".onnx":
        from bone_apps.core.export.runtime import load_onnx_model

        network, meta = load_onnx_model(path)
        return network.eval(), meta, ModelSpec.from_meta(meta, path)
    state, meta = load_weights(path)
    spec = ModelSpec.from_meta(meta, path)
    try:
        model = model_from_meta(meta)
    except BoneAppsError as exc:
        raise WeightsError(f"{path} describes a model this version cannot build ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path} holds parameters that do not fit the {meta.get('arch')} its "
                           f"metadata names ({first}): fit the model again.") from None
    return model.eval(), meta, spec


# ----------------------------------------------------------------------------------------------
# Devices and batches


def resolve_devices(spec: str = "auto", local_rank: int | None = None) -> list[str]:
    """Torch device names for a --device value: ["cpu"], ["cuda:0"], or several for DataParallel.

    Under torchrun (`local_rank` given) each process takes one GPU of its own. "cuda:all" names
    every visible GPU.
    """
    devices = parse_devices(spec, PredictConfigError)
    spec = devices[0]
    if spec == "cpu":
        return ["cpu"]
    from bone_apps.core.jobs.monitor import cuda_available_cheaply

    usable = cuda_available_cheaply()
    if usable:
        import torch

        usable = torch.cuda.is_available()
    if not usable:
        if spec == "auto":
            return ["cpu"]
        raise PredictConfigError("no CUDA GPU is available: choose device cpu or auto.")
    import torch

    count = torch.cuda.device_count()
    if spec in ("auto", "cuda"):
        ids = [0 if local_rank is None else local_rank % count]
    else:
        ids = gpu_indices(devices, count)
        bad = [i for i in ids if i >= count]
        if bad:
            raise PredictConfigError(f"GPU {bad[0]} does not exist ({count} GPUs): use cuda:0 to "
                                     f"cuda:{count - 1}.")
        if local_rank is not None:
            ids = [ids[local_rank % len(ids)]]
    return [f"cuda:{i}" for i in dict.fromkeys(ids)]


def _activation_bytes_cpu(model: torch.nn.Module, shape: tuple[int, ...], multiple: int) -> int:
    """Bytes of every layer output for one chunk of `shape` (C, [D,] H, W): an upper bound on
    what a forward pass holds at once, measured on a small input and scaled by the voxels."""
    import torch

    small = tuple(min(s, 2 * multiple) for s in shape[1:])
    total = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros((1, shape[0], *small)))
    finally:
        for handle in handles:
            handle.remove()
    return int(total * math.prod(shape[1:]) / math.prod(small))


def _gpu_bytes_per_chunk(model: torch.nn.Module, device: str, shape: tuple[int, ...]) -> int:
    """Peak GPU memory one chunk costs in a forward pass, from a trial pass (the paper's estimate)."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *shape), device=device))
            del out
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise PredictConfigError(
            f"the GPU ran out of memory for a single chunk of {'x'.join(map(str, shape[1:]))} voxels: "
            "choose a smaller chunk (e.g. --chunk 256) or the CPU.") from None
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - base)


def choose_batch(model: torch.nn.Module, devices: Sequence[str], shape: tuple[int, ...], classes: int,
                 chunks: int, multiple: int, reserve_bytes: int = 0, extra_per_chunk: int = 0) -> int:
    """The automatic batch: how many chunks of `shape` (C, [D,] H, W) one forward pass takes.

    CUDA: free memory of the first GPU (less `reserve_bytes` for the merge buffers) divided
    by a trial pass's peak (plus `extra_per_chunk`: the slices a chunk keeps open), times the
    number of GPUs. CPU: available RAM over the layer outputs of one chunk, but at most
    CPU_PIXELS_PER_PASS pixels per pass. Rounded down to a power of two, so small changes in
    free memory between runs do not change the batch.
    """
    voxels = math.prod(shape[1:])
    if devices[0].startswith("cuda"):
        import torch

        per_chunk = (_gpu_bytes_per_chunk(model, devices[0], shape) + voxels * classes * 4 * 3
                     + extra_per_chunk)
        free, _total = torch.cuda.mem_get_info(devices[0])
        batch = int((free * GPU_MEMORY_FRACTION - reserve_bytes) // per_chunk) * len(devices)
    else:
        import psutil

        per_chunk = (_activation_bytes_cpu(model, shape, multiple) + voxels * (classes + shape[0]) * 4
                     + extra_per_chunk)
        available = psutil.virtual_memory().available - reserve_bytes
        batch = min(int(available * CPU_MEMORY_FRACTION // per_chunk),
                    max(1, CPU_PIXELS_PER_PASS // voxels))
    batch = max(1, min(batch, chunks, MAX_AUTO_BATCH))
    return 1 << (batch.bit_length() - 1)


class ChunkRunner:
    """Runs batches of chunks through the network and returns softmax probabilities.

    On a CUDA out-of-memory error the batch is halved and the chunks are run again, so a
    too-optimistic estimate slows the run down instead of ending it.

    Args:
        model: the network (already on `devices[0]`), or any callable mapping (B, C, ...) to
            logits (B, classes, ...).
        devices: torch device names; several wrap the model in DataParallel.
        batch: chunks per forward pass.
        tta: average over the in-plane flips (identity, x, y, x and y).
    """

    def __init__(self, model: Callable, devices: Sequence[str], batch: int, tta: bool = False) -> None:
        import torch

        self._torch = torch
        self.devices = list(devices)
        self.device = torch.device(self.devices[0])
        self.batch = int(batch)
        self.tta = tta
        self.halvings = 0
        self.model_seconds = 0.0
        if len(self.devices) > 1:
            ids = [torch.device(d).index for d in self.devices]
            model = torch.nn.DataParallel(model, device_ids=ids, output_device=ids[0])
        self.model = model

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        spatial = x.dim() - 2
        axes = (-1, -2)
        flips = [()] + ([(axes[0],), (axes[1],), axes] if self.tta and spatial >= 2 else [])
        total = None
        for dims in flips:
            logits = self.model(torch.flip(x, dims) if dims else x)
            probs = torch.softmax(logits.float(), dim=1)
            if dims:
                probs = torch.flip(probs, dims)
            total = probs if total is None else total.add_(probs)
        return total if len(flips) == 1 else total.div_(len(flips))

    def _timed(self, x: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        cuda = self.device.type == "cuda"
        start = time.perf_counter()
        # Deterministic kernels: the same run twice gives bitwise-identical probabilities.
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            out = self._probabilities(x)
            if cuda:
                torch.cuda.synchronize(self.device)
        self.model_seconds += time.perf_counter() - start
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, classes, ...) float32 for chunks x (B, C, ...) on the device."""
        torch = self._torch
        parts = []
        i = 0
        while i < x.shape[0]:
            part = x[i:i + self.batch]
            try:
                parts.append(self._timed(part))
            except torch.cuda.OutOfMemoryError:
                if self.batch == 1:
                    raise PredictConfigError(
                        "the GPU ran out of memory for a single chunk: choose a smaller chunk "
                        "(e.g. --chunk 256) or the CPU.") from None
                self.batch = max(1, self.batch // 2)
                self.halvings += 1
                torch.cuda.empty_cache()
                continue
            i += part.shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# ----------------------------------------------------------------------------------------------
# Chunking one scan


@dataclass(frozen=True)
class ChunkPlan:
    """How a scan is cut into chunks: axis plans, and for 2D/2.5D one window row per slice."""

    dims: str
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
        if self.dims == "3d":
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
    if spec.dims == "3d":
        z = plan_axis(nz, chunk_depth or spec.patch_depth, multiple, overlap)
    else:
        z = AxisPlan(nz, 1, 1, tuple(range(nz)))
    return ChunkPlan(spec.dims, shape, z, plan_axis(ny, chunk, multiple, overlap),
                     plan_axis(nx, chunk, multiple, overlap), spec.context, spec.in_channels)


class _SliceSource:
    """Normalized, padded slices on the compute device, each read once and dropped when passed."""

    def __init__(self, volume: Volume, stats: ScanStats, norm: str, plan: ChunkPlan, device) -> None:
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


def _chunk_input(source: _SliceSource, plan: ChunkPlan, z0: int, y0: int, x0: int) -> torch.Tensor:
    torch = source._torch
    rows, cols = slice(y0, y0 + plan.y.input), slice(x0, x0 + plan.x.input)
    if plan.dims == "3d":
        return torch.stack([source.get(z0 + d)[rows, cols] for d in range(plan.z.input)])[None]
    if plan.dims == "2.5d":
        k = plan.context
        return torch.stack([source.get(z0 + d)[rows, cols] for d in range(-k, k + 1)])
    return source.get(z0)[rows, cols][None]


@dataclass
class _Tally:
    """Running label statistics of one scan, kept on the compute device."""

    counts: torch.Tensor
    histogram: torch.Tensor
    confidence: torch.Tensor
    reassigned: torch.Tensor


def segment_volume(
    volume: Volume,
    stats: ScanStats,
    spec: ModelSpec,
    runner: ChunkRunner,
    plan: ChunkPlan,
    sinks: Sequence[Callable[[np.ndarray], None]],
    threshold: float = 0.5,
    blend: BlendMode = BlendMode.MEAN,
    stop: threading.Event | None = None,
    index: int = 0,
) -> Generator[SliceProgress, None, dict]:
    """Predict one scan slice by slice, handing each finished slice to `sinks`.

    Args:
        volume: the scan.
        stats: its intensity statistics (for spec.norm).
        spec: the network's description.
        runner: runs chunk batches; its batch decides how many chunks (from one or several
            slices) go through the network together.
        plan: the chunks (plan_chunks).
        sinks: sinks[0] receives each (Y, X) label slice (uint8/uint16); sinks[1 + c], if
            present, class c's probability slice as uint8 0-255.
        threshold: winning probability below which a voxel becomes background.
        blend: weighting of overlapping chunks.
        stop: set it to stop between batches (raises Cancelled).
        index: scan number put into the progress records.

    Returns:
        A dict of counts, histogram, confidence_sum, reassigned, peak_open_slices,
        peak_cached_slices.
    """
    import torch

    device = runner.device
    nz, ny, nx = volume.shape
    source = _SliceSource(volume, stats, spec.norm, plan, device)
    accumulator = SliceAccumulator(spec.classes, (ny, nx), device)
    weight = None
    if blend is BlendMode.GAUSSIAN:
        weight = torch.from_numpy(window_weights(plan.window, blend)).to(device)
    label_dtype = torch.uint8 if spec.classes <= 256 else torch.int32
    out_dtype = np.uint8 if spec.classes <= 256 else np.uint16
    tally = _Tally(torch.zeros(spec.classes, dtype=torch.int64, device=device),
                   torch.zeros(HISTOGRAM_BINS, dtype=torch.int64, device=device),
                   torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device))
    wz, wy, wx = plan.window
    written = 0
    task = 0
    yield SliceProgress(index, 0, nz)
    while task < plan.chunks:
        end = min(task + runner.batch, plan.chunks)
        with torch.no_grad():
            corners = [plan.corner(t) for t in range(task, end)]
            batch = torch.stack([_chunk_input(source, plan, *c) for c in corners])
            probs = runner(batch)
            for (z0, y0, x0), p in zip(corners, probs):
                if plan.dims == "3d":
                    values = p[:, :wz, :wy, :wx]
                else:
                    values = p[:, None, :wy, :wx]
                accumulator.add(z0, y0, x0, values, weight)
            del batch, probs
        task = end
        ready = plan.first_slice_of(task)
        source.drop_below(ready - plan.context)
        while written < ready:
            with torch.no_grad():
                merged = accumulator.pop(written)
                labels = _finish_slice(merged, threshold, tally, label_dtype)
                label_slice = labels.cpu().numpy().astype(out_dtype, copy=False)
                sinks[0](label_slice)
                for c, sink in enumerate(sinks[1:]):
                    sink(merged[c].mul(255.0).round_().to(torch.uint8).cpu().numpy())
                accumulator.recycle(merged)
            written += 1
            yield SliceProgress(index, written, nz, label_slice)
        if stop is not None and stop.is_set():
            raise Cancelled("prediction was stopped; the unfinished output was removed.")
    return {
        "counts": [int(v) for v in tally.counts.cpu()],
        "histogram": [int(v) for v in tally.histogram.cpu()],
        "confidence_sum": float(tally.confidence.cpu()),
        "reassigned": int(tally.reassigned.cpu()),
        "peak_open_slices": accumulator.peak_open,
        "peak_cached_slices": source.peak,
    }


def _finish_slice(probs: torch.Tensor, threshold: float, tally: _Tally, dtype) -> torch.Tensor:
    """Labels (Y, X) from averaged probabilities (C, Y, X): argmax, then the threshold."""
    import torch

    winner, labels = probs.max(dim=0)
    low = winner < threshold
    tally.reassigned += (low & (labels != 0)).sum()
    labels = labels.masked_fill_(low, 0).to(dtype)
    tally.counts += torch.bincount(labels.reshape(-1).long(), minlength=tally.counts.numel())
    tally.confidence += winner.double().sum()
    bins = (winner * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
    tally.histogram += torch.bincount(bins.reshape(-1), minlength=HISTOGRAM_BINS)
    return labels


# ----------------------------------------------------------------------------------------------
# Outputs


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


@dataclass(frozen=True)
class ScanJob:
    """One scan and where its outputs go."""

    index: int
    scan: Path
    labels: Path
    probabilities: tuple[Path, ...]


def probability_target(labels: Path, class_name: str) -> Path:
    """Where a class's probability stack goes: next to the labels, named after the class, in
    the labels' format ("x.ome.zarr" -> "x_prob_bone.ome.zarr")."""
    tag = f"_prob_{_safe_name(class_name)}"
    stem = formats.strip_suffix(labels.name)
    return labels.with_name(stem + tag + labels.name[len(stem):])


# How messages name what a --format or an output name asks for.
_NAMED = {formats.TIFF_FILE: "a TIFF file", formats.ZARR: "an OME-Zarr image",
          formats.NIFTI: "a NIfTI file", formats.HDF5: "an HDF5 file"}


def _form_of(volume: Volume) -> str:
    """The output form of a scan's own kind (formats.FOLDER, TIFF_FILE, ZARR, NIFTI, HDF5)."""
    if volume.kind == "tiff":
        return formats.FOLDER if volume.is_folder else formats.TIFF_FILE
    return {"zarr": formats.ZARR, "nifti": formats.NIFTI, "hdf5": formats.HDF5}[volume.kind]


def _form_for(chosen: VolumeFormat | None, own: str) -> str:
    """The form a scan's outputs take: its own, or the one --format chooses (TIFF: a folder
    for a folder or Zarr scan, one multi-page file for a file)."""
    if chosen is None:
        return own
    if chosen is VolumeFormat.TIFF:
        return formats.FOLDER if own in (formats.FOLDER, formats.ZARR) else formats.TIFF_FILE
    return formats.FORM_OF_FORMAT[chosen]


def _suffix(form: str, scan: Path) -> str:
    """The suffix of an output of `form` (a NIfTI scan's own .nii or .nii.gz is kept)."""
    if form == formats.NIFTI and scan.name.lower().endswith(".nii"):
        return ".nii"
    return formats.FORM_SUFFIX[form]


def _check_single_out(scan: Path, own: str, out: Path, chosen: VolumeFormat | None) -> None:
    """OUT of a single scan must name a form the scan's labels can take (see plan_outputs)."""
    named = formats.form_of_name(out)
    if chosen is not None:
        wanted = _form_for(chosen, own)
        if chosen is VolumeFormat.TIFF:
            ok = named in (None, formats.TIFF_FILE)
        else:
            ok = named == wanted or (named is None and formats.labels_group_image(out) is not None
                                     and wanted == formats.ZARR)
        if not ok and named is None:
            words, suffix = formats.FORM_WORDS[wanted], formats.FORM_SUFFIX[wanted]
            raise PredictConfigError(f"--format {chosen.value} writes {words}: give --out a name ending "
                                     f"in {suffix} instead of {out}.")
        if not ok:
            raise PredictConfigError(f"--format {chosen.value} does not match {out}, which names "
                                     f"{_NAMED[named]}: change one of them.")
        return
    if named is None and formats.labels_group_image(out) is not None:
        return  # IMAGE.ome.zarr/labels/NAME: a labels group member (checked in _check_output_places)
    if named is None and own == formats.TIFF_FILE:
        raise PredictConfigError(f"{scan} is one multi-page TIFF, so its labels are written as one "
                                 f"too: give --out a file name ending in .tif instead of {out}.")
    if named is None and own != formats.FOLDER:
        raise PredictConfigError(f"{scan} is {formats.FORM_WORDS[own]}, so its labels are written as one "
                                 f"too: give --out a name ending in {_suffix(own, scan)} instead of {out} "
                                 "(or choose another format with --format).")
    if named == formats.TIFF_FILE and own == formats.FOLDER:
        raise PredictConfigError(f"{scan} is a folder of slices, so its labels are written as a "
                                 f"folder too: give --out a folder name instead of {out}.")


def plan_outputs(config: PredictConfig, class_names: Sequence[str]) -> list[ScanJob]:
    """Output paths of every scan: OUT itself for one scan, OUT/<id> for several.

    Outputs take their scan's kind: a folder scan gives a folder of slices, a multi-page scan
    one multi-page file, an OME-Zarr scan an OME-Zarr image (<id>.ome.zarr), a NIfTI scan a
    NIfTI file, an HDF5 scan an HDF5 file (<id>.h5, dataset /data). config.out_format
    chooses another kind for every scan; for one scan, OUT's suffix may choose too
    (.ome.zarr, .nii.gz, .h5, or .tif for a scan that is not a TIFF folder). An OME-Zarr
    scan's labels may join its own labels group: OUT = SCAN.ome.zarr/labels/NAME.

    Raises:
        VolumeError: a scan cannot be opened.
        PredictConfigError: OUT's form does not match the scan or the format, two scans share
            an id, or an output (labels, probabilities, report) would replace a scan or the
            weights or lie inside a scan folder or store (but for its labels group).
        OutputExistsError: an output exists and overwriting was not asked for, or (with
            overwrite) bone_apps did not write it (ForeignFilesError).
    """
    jobs = []
    out = config.out
    several = len(config.scans) > 1
    named = formats.form_of_name(out)
    file, dataset = formats.split_hdf5(out)
    if dataset is not None:
        raise PredictConfigError(f"{out} names a dataset: give --out the HDF5 file alone ({file}); the "
                                 f"labels go to its {formats.DEFAULT_HDF5_DATASET} dataset.")
    if several and named is not None:
        raise PredictConfigError(f"{out} names {_NAMED[named]} but {len(config.scans)} scans were given: "
                                 "give --out a folder, which receives one label stack per scan.")
    seen: dict[str, Path] = {}
    for i, scan in enumerate(config.scans):
        with open_volume(scan) as volume:  # headers only: an unreadable scan fails before any work
            own = _form_of(volume)
        sid = scan_id(scan)
        if several:
            if sid in seen:
                raise PredictConfigError(f"{seen[sid]} and {scan} would both be written as {sid}: "
                                         "rename one of them or predict them separately.")
            seen[sid] = scan
            form = _form_for(config.out_format, own)
            target = out / (sid + _suffix(form, scan))
        else:
            target = out
            _check_single_out(scan, own, out, config.out_format)
        if config.probabilities and formats.labels_group_image(target) is not None:
            raise PredictConfigError(f"{target} joins the labels group of an OME-Zarr image, which holds "
                                     "labels, not probability maps: give --out its own name (e.g. "
                                     f"{sid}_labels.ome.zarr) to write probabilities.")
        probs = tuple(probability_target(target, n) for n in class_names) if config.probabilities else ()
        jobs.append(ScanJob(i, scan, target, probs))
    targets = [] if config.report is None else [config.report]
    targets += [path for job in jobs for path in (job.labels, *job.probabilities)]
    _check_output_places(targets, config)
    # Before the statistics and the model: a refusal costs nothing and touches nothing.
    for target in targets:
        # Files of these formats carry their proof of ownership in their own place.
        ours = formats.file_is_ours if formats.form_of_name(target) in (formats.NIFTI, formats.HDF5) else None
        check_target(target, config.overwrite, ours)
    return jobs


def _check_output_places(targets: Sequence[Path], config: PredictConfig) -> None:
    """An output may not be a scan or the weights, nor lie inside a scan folder, store or file
    (but for a labels group member of the scan's own OME-Zarr image), nor overlap another output
    (a report inside the label folder would make it no longer ours)."""
    scans = [formats.location(scan) for scan in config.scans]  # HDF5 files, Zarr stores, ...
    inputs = {path.resolve(): path for path in (*scans, config.weights)}
    folders = [scan.resolve() for scan in scans if scan.is_dir()]
    planned: dict[Path, Path] = {}  # where each output goes -> the output as named
    above_planned: dict[Path, Path] = {}  # every folder above a planned output -> that output
    for target in targets:
        where = target.resolve()
        clash = (planned.get(where) or above_planned.get(where)
                 or next((planned[p] for p in where.parents if p in planned), None))
        if clash is not None and clash.resolve() == where:
            raise PredictConfigError(f"{target} would receive two outputs (of the labels, "
                                     "probabilities and report): give each its own name.")
        if clash is not None:
            raise PredictConfigError(f"{clash} and {target} would overlap, one inside the other: "
                                     "give each output (labels, probabilities, report) its own place.")
        planned[where] = target
        for folder in where.parents:
            above_planned.setdefault(folder, target)
        above = next(p for p in where.parents if os.path.lexists(p))
        if not above.is_dir():
            raise PredictConfigError(f"{target} would be written inside {above}, which is a file, "
                                     "not a folder: choose another output.")
        if where in inputs:
            what = "weights file" if inputs[where] == config.weights else "scan"
            raise PredictConfigError(f"{target} is the {what} itself: choose another output.")
        inside = next((folder for folder in folders if folder in where.parents), None)
        image = formats.labels_group_image(target)
        if inside is not None and not (image is not None and image.resolve() == inside):
            raise PredictConfigError(f"{target} is inside the scan folder {inside}: choose an output "
                                     "outside it, so that the scan's slices stay on their own.")


# ----------------------------------------------------------------------------------------------
# The run


def _torchrun_env() -> tuple[int, int, int] | None:
    """(world size, rank, local rank) when started by torchrun with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _stats_with_progress(paths: list[Path], config: PredictConfig
                         ) -> Generator[StatsProgress, None, list[ScanStats]]:
    """compute_stats_many in a helper thread, its progress forwarded as records."""
    from bone_apps.core.data.normalize import compute_stats_many

    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["stats"] = compute_stats_many(
                paths, workers=config.stats_workers, cache_dir=config.stats_cache,
                progress=lambda done, total: updates.put((done, total)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator's thread
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=work, name="bone-predict-stats")
    thread.start()
    try:
        while (item := updates.get()) is not None:
            yield StatsProgress(*item)
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["stats"]


def with_model_settings(config: PredictConfig, meta: dict) -> tuple[PredictConfig, str]:
    """`config` with the chunk, overlap and blend it leaves open taken from the weights (what
    the fit validated the model with), and a sentence saying so ("" when all were given)."""
    from bone_apps.core.fit.slice_validation import InferenceSettings

    recommended = InferenceSettings.from_meta(meta)
    open_fields = {name: getattr(recommended, name) for name in ("chunk", "overlap", "blend")
                   if getattr(config, name) is None}
    if not open_fields:
        return config, ""
    config = replace(config, **open_fields)
    note = ""
    if meta.get("inference"):
        validated = meta["inference"]
        used = InferenceSettings(config.chunk, config.overlap, config.blend.value)
        val_iou = validated.get("val_iou", float("nan"))
        note = f"; predicting with {used.text()} as the fit validated it (whole-slice mIoU {val_iou:.4f})"
        if validated.get("window_dependent"):
            note += (", because larger windows changed this model's labels "
                     f"({validated.get('agreement', 0):.1%} agreement)")
    return config, note


def predict(config: PredictConfig, stop: threading.Event | None = None
            ) -> Generator[PredictEvent, None, PredictReport]:
    """Predict label stacks for every scan of `config`, yielding progress records.

    Args:
        config: the run's options.
        stop: set it to stop between batches; raises Cancelled and leaves no output under
            its final name.

    Returns:
        The PredictReport (also written to config.report by rank 0).

    Raises:
        WeightsError: not a usable weights file.
        VolumeError: a scan cannot be read.
        PredictConfigError / OutputExistsError: options that do not suit the scans.
        Cancelled: `stop` was set.
    """
    from bone_apps.core.jobs.monitor import ResourceMonitor
    from bone_apps.core.model.weights import summarize_meta

    started = time.perf_counter()
    model, meta, spec = load_model(config.weights)
    config, settings_note = with_model_settings(config, meta)
    dist_env = _torchrun_env()
    world, rank, local_rank = dist_env or (1, 0, None)
    group_owned = False
    if dist_env is not None:
        import torch.distributed as dist

        if not dist.is_initialized():
            # Only small Python objects (the results) are exchanged: gloo works on every device.
            dist.init_process_group("gloo")
            group_owned = True
    try:
        jobs = plan_outputs(config, spec.class_names)
        if dist_env is not None:
            # Every rank has checked every output before any rank writes one.
            dist.barrier()
        mine = jobs[rank::world]
        devices = resolve_devices(config.device, local_rank)
        gpu_ids = [int(d.split(":")[1]) for d in devices if d.startswith("cuda")]
        model = model.to(devices[0])
        results: list[tuple[int, ScanResult]] = []
        batches: list[int] = []
        with ResourceMonitor(gpu_indices=gpu_ids or None) as monitor:
            stats: list[ScanStats] = []
            if mine:
                stats = yield from _stats_with_progress([j.scan for j in mine], config)
            if stop is not None and stop.is_set():
                raise Cancelled("prediction was stopped before the first scan; nothing was written.")
            for job, scan_stats in zip(mine, stats):
                result = yield from _predict_job(job, len(jobs), scan_stats, model, spec, devices,
                                                 config, stop, rank)
                results.append((job.index, result))
                batches.append(result.batch)
                yield ScanFinished(job.index, result)
            wall = time.perf_counter() - started
            local = {"results": [(i, r.to_dict()) for i, r in results], "wall_s": wall,
                     "model_s": sum(r.model_s for _, r in results), **monitor.snapshot(),
                     "batch": max(batches, default=0), "device": ",".join(devices)}
        if dist_env is not None:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
    finally:
        if group_owned:
            import torch.distributed as dist

            dist.destroy_process_group()
    combined = sorted((i, ScanResult.from_dict(d)) for part in gathered for i, d in part["results"])
    vram = [p["peak_vram_bytes"] for p in gathered if p["peak_vram_bytes"] is not None]
    util = [p["mean_gpu_utilization"] for p in gathered if p["mean_gpu_utilization"] is not None]
    devices_used = sorted({p["device"] for p in gathered})
    report = PredictReport(
        scans=tuple(r for _, r in combined), class_names=spec.class_names, threshold=config.threshold,
        meta_summary=summarize_meta(meta) + settings_note, meta=meta, config=config.to_dict(),
        wall_s=max(p["wall_s"] for p in gathered), model_s=sum(p["model_s"] for p in gathered),
        peak_rss_bytes=max(p["peak_rss_bytes"] for p in gathered),
        peak_vram_bytes=max(vram) if vram else None,
        gpu_utilization=sum(util) / len(util) if util else None,
        device=" ".join(devices_used), batch=max(p["batch"] for p in gathered),
        world_size=world, rank=rank)
    if config.report is not None and rank == 0:
        write_report_json(report, config.report, overwrite=config.overwrite)
    return report


def _predict_job(job: ScanJob, scans: int, stats: ScanStats, model, spec: ModelSpec,
                 devices: list[str], config: PredictConfig, stop: threading.Event | None,
                 rank: int = 0) -> Generator[PredictEvent, None, ScanResult]:
    """Predict one scan into its outputs (atomically) and summarize it."""
    from bone_apps.core.io.writer import VolumeWriter

    started = time.perf_counter()
    with open_volume(job.scan) as volume, ExitStack() as outputs:
        plan = plan_chunks(volume.shape, spec, config.chunk, config.chunk_depth, config.overlap)
        nz, ny, nx = volume.shape
        # Merge buffers of the slices in flight: reserve them before sizing the batch.
        slice_bytes = (spec.classes + 2) * ny * nx * 4  # merge sums, weights, normalized input
        reserve = (plan.z.window + 2 * plan.context + 1) * slice_bytes
        batch = config.batch or choose_batch(
            model, devices, plan.input_shape, spec.classes, plan.chunks, spec.required_multiple,
            reserve, extra_per_chunk=slice_bytes * nz // plan.chunks)
        runner = ChunkRunner(model, devices, batch, config.tta)
        yield ScanStarted(job.index, scans, job.scan, job.labels, volume.shape, batch, ",".join(devices))
        make_dirs(job.labels.parent)  # OUT for several scans; missing parents of OUT for one
        names = volume.slice_names
        label_dtype = np.uint8 if spec.classes <= 256 else np.uint16
        if spec.label_values:  # classes 0..N-1 are written as the user's own values (e.g. 0/255)
            label_dtype = LabelMap(spec.label_values).value_dtype
        sinks = []
        for target, dtype in [(job.labels, label_dtype)] + [(p, np.uint8) for p in job.probabilities]:
            writer = outputs.enter_context(VolumeWriter(
                target, volume.shape, dtype, slice_names=names, voxel_size=volume.voxel_size,
                overwrite=config.overwrite))
            sinks.append(writer.write)
        held = None
        if config.clean is not None:  # the labels are cleaned whole, then written once
            held, save_labels = _HeldLabels(volume.shape, label_dtype), sinks[0]
            sinks[0] = held.write
        if spec.label_values:
            to_values, write_labels = LabelMap(spec.label_values).to_values, sinks[0]
            sinks[0] = lambda labels: write_labels(to_values(labels))
        tally = yield from segment_volume(volume, stats, spec, runner, plan, sinks, config.threshold,
                                          config.blend, stop, job.index)
        counts, before, steps = tuple(tally["counts"]), None, ()
        if held is not None:
            yield ScanCleaning(job.index, job.labels)
            before = counts
            counts, steps = _clean_and_save(held.array, config.clean, spec, save_labels)
            if stop is not None and stop.is_set():
                raise Cancelled("prediction was stopped; the unfinished output was removed.")
    return ScanResult(
        scan=str(job.scan), output=str(job.labels), probabilities=tuple(str(p) for p in job.probabilities),
        shape=tuple(volume.shape), class_names=spec.class_names, counts=counts,
        confidence_sum=tally["confidence_sum"], reassigned=tally["reassigned"],
        histogram=tuple(tally["histogram"]), wall_s=time.perf_counter() - started,
        model_s=runner.model_seconds, batch=runner.batch,
        window=plan.window, chunks=plan.chunks, peak_open_slices=tally["peak_open_slices"],
        peak_cached_slices=tally["peak_cached_slices"], rank=rank, counts_before_clean=before,
        clean_steps=steps)


class _HeldLabels:
    """The label slices of one scan, kept in memory for the clean-up."""

    def __init__(self, shape: tuple[int, int, int], dtype: np.dtype | type) -> None:
        self.array = np.empty(shape, dtype=dtype)
        self.written = 0

    def write(self, labels: np.ndarray) -> None:
        self.array[self.written] = labels
        self.written += 1


def _clean_and_save(labels: np.ndarray, options: CleanOptions, spec: ModelSpec,
                    save: Callable[[np.ndarray], None]) -> tuple[tuple[int, ...], tuple[CleanStep, ...]]:
    """Clean a (Z, Y, X) stack of output values and hand each slice to `save`.

    Returns the voxels per class of the cleaned stack and the clean-up's steps.
    """
    from bone_apps.core.predict.cleanup import clean_labels

    cleaned, report = clean_labels(labels, options)
    values = list(spec.label_values or range(spec.classes))
    by_value = np.zeros(max(values) + 1, dtype=np.int64)
    for plane in cleaned:
        by_value += np.bincount(plane.reshape(-1), minlength=by_value.size)[:by_value.size]
        save(plane)
    return tuple(int(by_value[v]) for v in values), tuple(report.steps)


def run_predict(config: PredictConfig, stop: threading.Event | None = None,
                on_event: Callable[[PredictEvent], None] | None = None) -> PredictReport:
    """Run `predict` to the end (optionally seeing each record) and return its report."""
    return run_to_end(predict(config, stop), on_event)
