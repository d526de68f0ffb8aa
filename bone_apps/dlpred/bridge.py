"""What the DLPred window needs from the prediction engine, in the window's terms.

Builds the engine's PredictConfig from the form, follows its progress records (slices done,
rate, time left, the labels of each slice written) and turns its report into table rows.
No Qt here: this is plain code the tests can call directly.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.errors import OptionError, VolumeError
from bone_apps.core.io.stack_kind import dataset_root_problem, is_dataset_root, label_stack_reason
from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.core.jobs.units import bytes_text, duration_text
from bone_apps.core.options import described
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.output_plan import scan_id
from bone_apps.core.predict.reports import PredictEvent, PredictReport, ScanStarted, SliceProgress
from bone_apps.core.predict.segment import predict
from bone_apps.dlpred.options import OptionValues

PREDICTIONS_FOLDER = "predictions"  # a dataset's outputs: ROOT/predictions/<id>_labels
RATE_WINDOW_S = 10.0  # the rate is measured over the last seconds, so it follows speed changes
# The one option a core message other than a PredictConfigError spells out: io.outputs refuses to
# replace an output "(--overwrite)"; in the window the same advice names the checkbox.
_OVERWRITE = (" (--overwrite)", f" (tick {described(PredictConfig)['overwrite'].in_words})")


def default_output(scan: Path) -> Path:
    """Where the labels of `scan` go unless the user says otherwise, named `<id>_labels`
    in the scan's own kind (a folder for a folder of slices, a .tif file for a multi-page TIFF,
    <id>_labels.ome.zarr, .nii.gz or .h5 for those), as the engine wants.

    A scan of a dataset (ROOT/scans/<id> or ROOT/masks/<id>) gets ROOT/predictions/<id>_labels,
    outside scans/ and masks/, so the output is never taken for a scan or a mask of the
    dataset; any other scan gets its output next to it.
    """
    from bone_apps.core.io import formats

    name = f"{scan_id(scan)}_labels{formats.own_suffix(scan)}"
    where = formats.location(scan)  # the file or folder holding the scan (an HDF5 file, a store)
    if where.parent.name in ("scans", "masks") and is_dataset_root(where.parent.parent):
        return where.parent.parent / PREDICTIONS_FOLDER / name
    return where.with_name(name)


def open_scan(path: Path) -> tuple[Volume, str | None]:
    """Open a scan (headers) and judge a few slices: (volume, why it looks like a label mask).

    Raises:
        VolumeError: `path` is a dataset folder (saying to choose one scan inside scans/), or
            it cannot be opened as a scan.
    """
    problem = dataset_root_problem(path)
    if problem:
        raise VolumeError(problem)
    volume = open_volume(path)
    return volume, label_stack_reason(volume)


def plain_message(message: str | BaseException) -> str:
    """An engine message in the window's words: an OptionError names its options by their labels
    (its {field}s); a refused overwrite names the window's checkbox."""
    if isinstance(message, OptionError):
        return message.shown(as_label=True)
    return str(message).replace(*_OVERWRITE)


def matching_mask(scan: Path | None) -> Path | None:
    """The reference mask of a scan laid out as ROOT/scans/<id> -> ROOT/masks/<id>, if it exists."""
    if scan is None or scan.parent.name != "scans":
        return None
    mask = scan.parent.parent / "masks" / scan.name
    return mask if mask.exists() else None


def read_meta(path: Path) -> dict:
    """The metadata of a weights file (WeightsError with one sentence when it is not usable)."""
    from bone_apps.core.model.spec import ModelSpec

    if Path(path).suffix.lower() == ".onnx":  # written by bone export: metadata inside
        from bone_apps.core.export.runtime import load_onnx_model

        meta = load_onnx_model(Path(path))[1]
    else:
        from bone_apps.core.model.weights import load_weights

        _state, meta = load_weights(path)
    ModelSpec.from_meta(meta, path)  # the same checks prediction makes, shown at once
    return meta


def class_names(meta: dict) -> list[str]:
    names = meta.get("class_names") or []
    return [str(n) for n in names] or [str(i) for i in range(int(meta.get("classes", 0)))]


def fitted_on(meta: dict) -> str | None:
    """One line on the data a model was fitted on, from whatever its metadata records."""
    config = meta.get("fit_config") or {}
    split = meta.get("split") or {}  # weights format /2 on; /1 files fall through to the config
    train, val = split.get("train"), split.get("val")
    if train:
        line = f"fitted on {len(train)} scan(s): {_names(train)}"
        return line + (f"; validated on {_names(val)}" if val else "")
    pairs = config.get("pairs") or []
    if pairs:
        return f"fitted on {len(pairs)} scan/mask pair(s): {_names([p[0] for p in pairs])}"
    if config.get("data"):
        return f"fitted on the dataset {config['data']}"
    return None


def _names(paths: list, shown: int = 4) -> str:
    names = [scan_id(Path(str(p))) for p in paths]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def describe_meta(meta: dict) -> str:
    """The weights' summary lines, plus what the model was fitted on when the file says."""
    from bone_apps.core.model.weights import summarize_meta

    lines = summarize_meta(meta).splitlines()
    data = fitted_on(meta)
    if data:
        lines.append(data)
    config = meta.get("fit_config") or {}
    if config.get("epochs"):
        lines.append(f"fitting: {config['epochs']} epochs, batch {config.get('batch')}, "
                     f"learning rate {config.get('lr')}")
    return "\n".join(lines)


def make_config(scan: Path, weights: Path, out: Path, options: OptionValues,
                overwrite: bool, is_3d: bool) -> PredictConfig:
    """The engine's config from the form (PredictConfigError when an option is out of range)."""
    shared = {f.name for f in fields(PredictConfig)}
    values = {name: value for name, value in asdict(options).items() if name in shared}
    values.update(chunk_depth=options.chunk_depth if is_3d else None, batch=options.batch or None)
    return PredictConfig(scans=(scan,), weights=weights, out=out, overwrite=overwrite, **values)


def run(config: PredictConfig, stop: threading.Event) -> Generator[PredictEvent, None, PredictReport]:
    """The engine's generator, as the worker thread drives it."""
    return predict(config, stop)


@dataclass(frozen=True)
class Progress:
    """What the window shows for one progress record."""

    done: int
    total: int
    text: str
    z: int | None = None  # the slice just written, with its labels
    labels: np.ndarray | None = None


class Tracker:
    """Follows a run's records: slices done, rate over the last seconds, time left."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._marks: deque[tuple[float, int]] = deque()
        self.device, self.batch = "", 0

    def update(self, event: PredictEvent) -> Progress | None:
        if isinstance(event, StatsProgress):
            return Progress(0, 0, f"Measuring the scan's intensities for normalization "
                                  f"({event.done} of {event.total} scans)…")
        if isinstance(event, ScanStarted):
            self.device, self.batch = event.device, event.batch
            self._marks.clear()
            return Progress(0, event.shape[0], f"Predicting on {event.device}, "
                                               f"{event.batch} chunk(s) per batch…")
        if not isinstance(event, SliceProgress):
            return None
        now = self._clock()
        self._marks.append((now, event.done))
        while len(self._marks) > 2 and now - self._marks[0][0] > RATE_WINDOW_S:
            self._marks.popleft()
        text = f"{event.done} of {event.total} slices"
        (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
        if d1 > d0 and t1 > t0:
            rate = (d1 - d0) / (t1 - t0)
            text += f" · {rate:.3g} slices/s · {duration_text((event.total - event.done) / rate)} left"
        z = event.done - 1 if event.labels is not None else None
        return Progress(event.done, event.total, text, z, event.labels)


def report_rows(report: PredictReport) -> list[tuple[str, str]]:
    """(quantity, value) rows for the results table; a value of "" starts a section."""
    rows: list[tuple[str, str]] = [("Classes (after the threshold)", "")]
    for label, (name, count, fraction) in enumerate(
            zip(report.class_names, report.counts, report.fractions)):
        rows.append((f"{label}: {name}", f"{count:,} voxels ({100 * fraction:.2f} %)"))
    rows += [
        ("Confidence", ""),
        ("Mean winning probability", f"{report.mean_confidence:.4f}"),
        (f"Set to background (below {report.threshold:g})",
         f"{100 * report.reassigned_fraction:.2f} % of voxels"),
        ("Benchmarks", ""),
        ("Wall time", duration_text(report.wall_s)),
        ("Model time (forward passes)", duration_text(report.model_s)),
        ("Peak RAM", bytes_text(report.peak_rss_bytes)),
        ("Peak GPU memory", bytes_text(report.peak_vram_bytes, "— (no GPU)")),
        ("GPU use", "— (no GPU)" if report.gpu_utilization is None
         else f"{report.gpu_utilization:.0f} %"),
        ("Device", report.device),
        ("Chunks per batch", str(report.batch)),
    ]
    for scan in report.scans:
        d, h, w = scan.window
        size = f"{h} x {w} px" if d == 1 else f"{d} x {h} x {w} voxels"
        rows += [("Chunks", f"{scan.chunks:,} of {size}"), ("Output", scan.output)]
    return rows


def done_text(report: PredictReport) -> str:
    slices = sum(s.shape[0] for s in report.scans)
    rate = f" ({slices / report.wall_s:.3g} slices/s)" if report.wall_s > 0 else ""
    return f"Done: {slices} slices in {duration_text(report.wall_s)}{rate}."


def histogram_of(report: PredictReport) -> list[int]:
    return list(report.histogram)


def output_of(report: PredictReport) -> Path | None:
    return Path(report.scans[0].output) if report.scans else None
