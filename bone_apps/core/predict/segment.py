"""Prediction (DLPred): label stacks from scans and a weights file, streamed in bounded memory.

`predict(config)` is a generator: it yields small progress records and returns a
PredictReport. For each scan it computes the scan's intensity statistics (in parallel worker
processes, before anything else), then walks the scan as a moving slab: the sliding-window
inferer (inferer.infer_slices) reads and normalizes each slice once, cuts it into overlapping
chunks (2D, 2.5D with neighbouring slices as channels, or 3D slabs), runs them through the
network in batches that may span several slices, and merges their softmax probabilities as a
true weighted average. Each merged slice is labelled (argmax, then the confidence threshold),
tallied and written the moment no chunk still to come touches it, so neither the probability
volume nor the label volume ever exists in memory. Outputs are written under temporary names
and renamed when complete.

Under `torchrun` each process predicts its share of the scans and rank 0 writes the combined
report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.errors import BoneAppsError, Cancelled, WeightsError
from bone_apps.core.io.labels import LabelMap
from bone_apps.core.io.outputs import make_dirs
from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.core.jobs import ddp
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.model.spec import ModelSpec
from bone_apps.core.predict.batching import ChunkRunner, choose_batch, resolve_devices
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.inferer import ChunkPlan, SliceSource, infer_slices, plan_chunks
from bone_apps.core.predict.output_plan import ScanJob, plan_outputs
from bone_apps.core.predict.reports import (
    HISTOGRAM_BINS,
    PredictEvent,
    PredictReport,
    ScanCleaning,
    ScanFinished,
    ScanResult,
    ScanStarted,
    SliceProgress,
    combine,
    local_part,
    write_report_json,
)
from bone_apps.core.predict.settings import with_model_settings
from bone_apps.core.predict.windows import BlendMode, window_weights

if TYPE_CHECKING:
    import torch

    from bone_apps.core.data.normalize import ScanStats
    from bone_apps.core.predict.cleanup import CleanOptions, CleanStep


def load_model(path: Path) -> tuple[torch.nn.Module, dict, ModelSpec]:
    """Rebuild the network a weights file describes (never downloading) and load its parameters.

    An .onnx file written by `bone export` gives a module that runs the network in onnxruntime
    (core/export/runtime.py), with the metadata the file carries.
    """
    from bone_apps.core.model.weights import load_weights

    if Path(path).suffix.lower() == ".onnx":
        from bone_apps.core.export.runtime import load_onnx_model

        network, meta = load_onnx_model(path)
        return network.eval(), meta, ModelSpec.from_meta(meta, path)
    state, meta = load_weights(path)
    spec = ModelSpec.from_meta(meta, path)
    try:
        model = spec.build()
    except BoneAppsError as exc:
        raise WeightsError(f"{path} describes a model this version cannot build ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path} holds parameters that do not fit the {meta.get('arch')} its "
                           f"metadata names ({first}): fit the model again.") from None
    return model.eval(), meta, spec


@dataclass
class _Tally:
    """Running label statistics of one scan, kept on the stitching device."""

    counts: torch.Tensor
    histogram: torch.Tensor
    confidence: torch.Tensor
    reassigned: torch.Tensor

    @classmethod
    def zeros(cls, classes: int, device) -> _Tally:
        import torch

        return cls(torch.zeros(classes, dtype=torch.int64, device=device),
                   torch.zeros(HISTOGRAM_BINS, dtype=torch.int64, device=device),
                   torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device))

    def to_dict(self) -> dict:
        return {"counts": [int(v) for v in self.counts.cpu()],
                "histogram": [int(v) for v in self.histogram.cpu()],
                "confidence_sum": float(self.confidence.cpu()), "reassigned": int(self.reassigned.cpu())}


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

    device = runner.device  # computing and stitching on one device
    nz = volume.shape[0]
    source = SliceSource(volume, stats, spec.norm, plan, device)
    weight = None
    if blend is BlendMode.GAUSSIAN:
        weight = torch.from_numpy(window_weights(plan.window, blend)).to(device)
    label_dtype = torch.uint8 if spec.classes <= 256 else torch.int32
    out_dtype = np.uint8 if spec.classes <= 256 else np.uint16
    tally = _Tally.zeros(spec.classes, device)
    yield SliceProgress(index, 0, nz)
    slices = infer_slices(runner, source, plan, runner.batch, spec.classes, weight, device, stop)
    while True:
        try:
            z, merged = next(slices)
        except StopIteration as end:
            peak_open = end.value
            break
        with torch.no_grad():
            labels = _finish_slice(merged, threshold, tally, label_dtype)
            label_slice = labels.cpu().numpy().astype(out_dtype, copy=False)
            sinks[0](label_slice)
            for c, sink in enumerate(sinks[1:]):
                sink(merged[c].mul(255.0).round_().to(torch.uint8).cpu().numpy())
        yield SliceProgress(index, z + 1, nz, label_slice)
    return {**tally.to_dict(), "peak_open_slices": peak_open, "peak_cached_slices": source.peak}


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
    info = ddp.DistInfo.from_env()
    group_owned = info.enabled and not _group_active()
    if group_owned:
        # Only small Python objects (the results) are exchanged: gloo works on every device.
        ddp.init_process_group(info, cuda=False)
    try:
        jobs = plan_outputs(config, spec.class_names)
        ddp.barrier()  # every rank has checked every output before any rank writes one
        mine = jobs[info.rank::info.world]
        devices = resolve_devices(config.device, info.local_rank if info.enabled else None)
        gpu_ids = [int(d.split(":")[1]) for d in devices if d.startswith("cuda")]
        model = model.to(devices[0])
        results: list[tuple[int, ScanResult]] = []
        with ResourceMonitor(gpu_indices=gpu_ids or None) as monitor:
            stats: list[ScanStats] = []
            if mine:
                stats = yield from _scan_stats([j.scan for j in mine], config)
            if stop is not None and stop.is_set():
                raise Cancelled("prediction was stopped before the first scan; nothing was written.")
            for job, scan_stats in zip(mine, stats):
                result = yield from _predict_job(job, len(jobs), scan_stats, model, spec, devices,
                                                 config, stop, info.rank)
                results.append((job.index, result))
                yield ScanFinished(job.index, result)
            local = local_part(results, time.perf_counter() - started, monitor.snapshot(), devices)
        parts = _gather(local, info)
    finally:
        if group_owned:
            ddp.destroy_process_group()
    report = combine(parts, class_names=spec.class_names, threshold=config.threshold,
                     meta_summary=summarize_meta(meta) + settings_note, meta=meta,
                     config=config.to_dict(), rank=info.rank)
    if config.report is not None and info.is_main:
        write_report_json(report, config.report, overwrite=config.overwrite)
    return report


def _scan_stats(paths: list[Path], config: PredictConfig
                ) -> Generator[StatsProgress, None, list[ScanStats]]:
    """The scans' intensity statistics, computed in a helper thread with progress records."""
    from bone_apps.core.data.normalize import compute_stats_many, stats_with_progress

    return (yield from stats_with_progress(
        lambda progress: compute_stats_many(paths, workers=config.stats_workers,
                                            cache_dir=config.stats_cache, progress=progress),
        "bone-predict-stats"))


def _group_active() -> bool:
    """Whether this process already belongs to a torch.distributed process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _gather(part: dict, info: ddp.DistInfo) -> list[dict]:
    """Every process's share of the run (in rank order); just this one's outside torchrun."""
    if not info.enabled:
        return [part]
    import torch.distributed as dist

    gathered: list = [None] * info.world
    dist.all_gather_object(gathered, part)
    return gathered


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
