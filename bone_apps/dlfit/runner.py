"""Runs the fitting engine off the GUI thread and turns its records into what FitMonitor shows."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.loop import fit
from bone_apps.core.fit.records import EpochEnd, FitFinished, FitMessage, FitResult, StepProgress
from bone_apps.core.jobs.monitor import tree_rss_bytes
from bone_apps.core.jobs.units import bytes_text, duration_text
from bone_apps.dlfit.curves import FitMonitor
from bone_apps.dlfit.tips import plain_options
from bone_apps.ui.worker import JobWorker, dispose


class FitRunner(QObject):
    """One fit at a time: `start()` runs `core.fit.fit` in a JobWorker and feeds `monitor`.

    Signals (on the GUI thread): `progress(record)` after the monitor showed each engine
    record, `finished(result)` with the FitResult (None after an error), `error(message)`.
    """

    progress = Signal(object)
    finished = Signal(object)
    error = Signal(str)

    def __init__(self, monitor: FitMonitor, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.monitor = monitor
        self.worker: JobWorker | None = None
        self.result: FitResult | None = None
        self._best_per_class: dict = {}
        self._ram = QTimer(self)
        self._ram.setInterval(1000)
        self._ram.timeout.connect(self._sample_ram)

    def is_running(self) -> bool:
        return self.worker is not None

    def start(self, config: FitConfig, resume: bool = False, overwrite: bool = False) -> None:
        """Fit `config` (resume: continue the run in config.out; overwrite: replace it)."""
        if self.worker is not None:
            return
        self.result = None
        first = 0
        if resume:
            history = read_history(Path(config.out))
            self.monitor.start(config.epochs, len(history))
            self.monitor.set_history(history)
            first = len(history)
            best = best_row(history)
            if best is not None:
                self.monitor.set_best(best["epoch"], best["val_iou"], best["per_class"])
        else:
            self.monitor.start(config.epochs)
        self.monitor.append_log(("Resuming" if resume else "Starting") + f" a fit into {config.out}")
        self._first_epoch = first
        self.worker = JobWorker(lambda stop: fit(config, resume=resume, overwrite=overwrite, stop=stop),
                                yielded=self._on_event, returned=self._on_result, errored=self._on_error,
                                cancelled=self._on_cancelled, finished=self._on_finished)
        self._ram.start()
        self.worker.start()

    def stop(self) -> None:
        """Ask the fit to end at its next safe point (it saves a resumable checkpoint)."""
        if self.worker is not None:
            self.worker.stop()
            self.monitor.append_log("Stopping at the next safe point…")

    def wait(self) -> None:
        if self.worker is not None:
            self.worker.wait(600_000)

    # -- records --------------------------------------------------------------------------------
    def _on_event(self, event: object) -> None:
        monitor = self.monitor
        if isinstance(event, StepProgress):
            monitor.set_batch(event.epoch, event.step, event.steps,
                              "training" if event.phase == "train" else "validation")
            monitor.set_resources(lr=event.lr)
        elif isinstance(event, EpochEnd):
            monitor.add_epoch(event.epoch, event.train_loss, event.val_loss, event.train_iou,
                              _finite(event.val_iou))
            monitor.set_epoch_seconds(event.epoch_seconds)
            res = event.resources
            monitor.set_resources(lr=event.lr, ram=res.get("peak_rss_bytes"),
                                  gpu_util=res.get("mean_gpu_utilization"),
                                  vram=res.get("peak_vram_bytes"))
            if event.improved:
                monitor.set_best(event.epoch, event.val_iou, event.val_iou_per_class)
            monitor.append_log(
                f"epoch {event.epoch}/{event.epochs}: loss {event.train_loss:.4f} / "
                f"{event.val_loss:.4f}, IoU {event.train_iou:.4f} / {event.val_iou:.4f} "
                f"(train / validation), {duration_text(event.epoch_seconds)}"
                + (" — best so far, weights saved" if event.improved else ""))
        elif isinstance(event, StatsProgress):
            monitor.set_preparing(event.done, event.total)
        elif isinstance(event, FitMessage):
            prefix = "" if event.level == "info" else f"{event.level}: "
            monitor.append_log(prefix + event.text)
        elif isinstance(event, FitFinished):
            pass  # the same result arrives as the generator's return value
        self.progress.emit(event)

    def _on_result(self, result: FitResult) -> None:
        self.result = result
        self.monitor.show_summary(summary_text(result), result.out)
        self.monitor.append_log(summary_text(result))

    def _on_error(self, message: str) -> None:
        message = plain_options(message)
        self.monitor.append_log(f"error: {message}")
        self.error.emit(message)

    def _on_cancelled(self) -> None:
        # Stopped while the scans were still being checked: nothing was fitted or saved.
        self.monitor.append_log("Stopped before fitting began; nothing was saved.")

    def _on_finished(self) -> None:
        self._ram.stop()
        self.worker = dispose(self.worker)
        self.monitor.set_idle()
        self.finished.emit(self.result)

    def _sample_ram(self) -> None:
        self.monitor.set_ram_now(tree_rss_bytes())


def summary_text(result: FitResult) -> str:
    """What the user reads at the end: best epoch, best validation IoU, weights, time."""
    summary = result.summary or {}
    times, peaks = summary.get("times", {}), summary.get("peaks", {})
    epochs = summary.get("epochs", "?")
    best = ("no validation IoU yet" if result.best_val_iou is None else
            f"best epoch {result.best_epoch} with validation IoU {result.best_val_iou:.4f}")
    time_line = (f"Time: {duration_text(times.get('fit_loop_s'))} of fitting in all epochs; "
                 f"{duration_text(times.get('wall_s'))} since the last Start or Resume")
    if peaks.get("peak_ram_bytes"):
        time_line += f"; peak RAM {bytes_text(peaks['peak_ram_bytes'])}"
    if peaks.get("peak_vram_bytes"):
        time_line += f", peak GPU memory {bytes_text(peaks['peak_vram_bytes'])}"
    if result.status == "stopped":
        return (f"Stopped after {result.epochs_done} of {epochs} epochs; {best}.\n"
                f"Press Resume to continue from {result.checkpoint_path}.\n{time_line}.")
    weights = result.model_path or "not written (validation IoU never improved)"
    return f"Done: {epochs} epoch{'' if epochs == 1 else 's'}; {best}.\nWeights: {weights}\n{time_line}."


def read_history(out: Path) -> list[dict]:
    """Rows of log.csv (one per finished epoch) as numbers; [] when there is none."""
    path = Path(out) / runfiles.LOG_CSV
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    history = []
    for row in rows:
        values = {k: _number(v) for k, v in row.items()}
        if values.get("epoch") is None:
            continue
        values["epoch"] = int(values["epoch"])
        values["per_class"] = {k[len("val_iou_"):]: values[k] for k in row if k.startswith("val_iou_")}
        history.append(values)
    return history


def best_row(history: list[dict]) -> dict | None:
    rows = [r for r in history if r.get("val_iou") is not None]
    return max(rows, key=lambda r: r["val_iou"]) if rows else None


def run_status(out: Path) -> str:
    """"resumable", "completed", "other" (run files without a checkpoint) or "" (no run)."""
    out = Path(out)
    if not out.is_dir() or not runfiles.holds_run(out):
        return ""
    try:
        status = json.loads((out / runfiles.SUMMARY).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        return "completed"
    if (out / runfiles.CHECKPOINT).is_file() and (out / runfiles.CONFIG).is_file():
        return "resumable"
    return "other"


def _number(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
