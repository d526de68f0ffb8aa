"""The right-hand side of the DLFit window: progress, live curves, best epoch, resources, log."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.jobs.units import bytes_text, duration_text
from bone_apps.ui.plot import LinePlot

LOG_LINES = 5000  # the log file keeps everything; the pane keeps the recent part
MIN_TIMED_BATCHES = 2  # fewer timed batches give no meaningful estimate
DONE_FORMAT = "%v of %m epochs done"


class FitMonitor(QWidget):
    """Shows a running fit: epoch and batch bars with ETA, loss and IoU curves, the best
    epoch's per-class validation IoU, learning rate and resources, a log, then the summary."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._epoch, self._epoch_started = 0, time.monotonic()
        self._epoch_times: list[float] = []
        self._phase: tuple[int, str] | None = None
        self._ram_now: float | None = None
        self._ram_peak: float | None = None

        self.epoch_bar = QProgressBar()
        self.epoch_bar.setFormat("Epoch %v of %m")
        self.epoch_bar.setToolTip("Epochs finished. One epoch visits every training tile once.")
        self.batch_bar = QProgressBar()
        self.batch_bar.setFormat("Batch %v of %m")
        self.batch_bar.setToolTip("Batches of the current epoch (training, then validation).")
        for bar, text in ((self.epoch_bar, "Epochs"), (self.batch_bar, "Batches")):
            bar.setRange(0, 1)
            bar.setValue(0)
            bar.setFormat(text)  # until a fit starts
        self.eta_label = QLabel("Not started.")
        self.eta_label.setToolTip("Time left, estimated from the epochs and batches so far.")
        self.lr_label = QLabel("Learning rate: —")
        self.lr_label.setToolTip("The step size now; the scheduler lowers it as epochs pass.")
        self.ram_label = QLabel("RAM: —")
        self.ram_label.setToolTip("Peak memory of the fitting process and its data loaders.")
        self.gpu_label = QLabel("GPU: not used")
        self.gpu_label.setToolTip("GPU utilization and memory (NVIDIA GPUs only).")
        progress = QGroupBox("Progress")
        grid = QGridLayout(progress)
        grid.addWidget(self.epoch_bar, 0, 0, 1, 2)
        grid.addWidget(self.batch_bar, 1, 0, 1, 2)
        grid.addWidget(self.eta_label, 2, 0, 1, 2)
        grid.addWidget(self.lr_label, 3, 0)
        grid.addWidget(self.ram_label, 3, 1)
        grid.addWidget(self.gpu_label, 4, 0, 1, 2)

        self.loss_plot = LinePlot("Loss", "epoch", "loss")
        self.loss_plot.setToolTip("Training and validation loss per epoch. Validation rising "
                                  "while training falls means the model is overfitting.")
        self.iou_plot = LinePlot("IoU", "epoch", "mean IoU", y_range=(0.0, 1.0))
        self.iou_plot.setToolTip("Mean intersection-over-union per epoch; the weights are saved "
                                 "whenever validation IoU improves.")
        for plot in (self.loss_plot, self.iou_plot):
            plot.empty_text = "No finished epoch yet."
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.iou_plot)

        self.best_label = QLabel("Best epoch: —")
        self.best_table = QTableWidget(0, 2)
        self.best_table.setHorizontalHeaderLabels(("Class", "Validation IoU"))
        self.best_table.verticalHeader().setVisible(False)
        self.best_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.best_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.best_table.setToolTip("Validation IoU of each class at the best epoch so far.")
        best = QGroupBox("Best epoch")
        best_layout = QVBoxLayout(best)
        best_layout.addWidget(self.best_label)
        best_layout.addWidget(self.best_table)

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        # Every message is read whole: long notes wrap at the pane's edge (fit.log keeps the
        # unwrapped text, tables included).
        self.log.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self._follow, self._appending = True, False
        self.log.verticalScrollBar().valueChanged.connect(self._log_scrolled)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setToolTip("What the fitting engine reports; the full log is fit.log in the "
                            "output folder.")
        log_box = QGroupBox("Log")
        QVBoxLayout(log_box).addWidget(self.log)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(best)
        lower.addWidget(log_box)
        lower.setStretchFactor(1, 2)

        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_button = QPushButton("Open output fo&lder")
        self.open_button.setToolTip("Show the weights, logs and curves in the file manager.")
        self.open_button.clicked.connect(self._open_folder)
        self.summary = QGroupBox("Result")
        summary_layout = QHBoxLayout(self.summary)
        summary_layout.addWidget(self.summary_label, 1)
        summary_layout.addWidget(self.open_button, 0, Qt.AlignmentFlag.AlignTop)
        self.summary.hide()
        self._out: Path | None = None

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(plots)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(progress)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)

    # -- a run ----------------------------------------------------------------------------------
    def start(self, epochs: int, first_epoch: int = 0) -> None:
        """A fit begins (or resumes after `first_epoch` finished epochs)."""
        self._epoch, self._epoch_started = 0, time.monotonic()
        self._phase = None
        self._epoch_times = []
        self._ram_now = self._ram_peak = None
        self.epoch_bar.setRange(0, max(1, epochs))
        self.epoch_bar.setFormat(f"Epoch {first_epoch + 1} of %m")  # the running one, 1-based
        self.epoch_bar.setValue(first_epoch)
        self._reset_batch_bar()
        self.eta_label.setText("Preparing: checking the pairs and computing scan statistics…")
        self.summary.hide()
        if first_epoch == 0:
            self._clear_results()

    def clear(self) -> None:
        """Forget the shown run: empty curves, no best epoch, no result, bars at rest."""
        self._epoch_times = []
        self._clear_results()
        self.summary.hide()
        self.epoch_bar.setRange(0, 1)
        self.epoch_bar.setValue(0)
        self.epoch_bar.setFormat("Epochs")
        self._reset_batch_bar()
        self.eta_label.setText("Not started.")

    def _clear_results(self) -> None:
        for plot in (self.loss_plot, self.iou_plot):
            plot.clear()
        self.best_table.setRowCount(0)
        self.best_label.setText("Best epoch: —")

    def _reset_batch_bar(self) -> None:
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("Batches")

    def set_preparing(self, done: int, total: int) -> None:
        """Scan statistics and mask checks before fitting: `done` of `total` volumes."""
        self.batch_bar.setFormat("Checking scans and masks: %v of %m")
        self.batch_bar.setRange(0, max(1, total))
        self.batch_bar.setValue(done)

    def set_batch(self, epoch: int, step: int, steps: int, phase: str = "training") -> None:
        """Batch `step` (1-based) of `steps` of `phase` in epoch `epoch` (1-based) is done."""
        now = time.monotonic()
        if epoch != self._epoch:
            self._epoch, self._epoch_started = epoch, now
        if self._phase != (epoch, phase):
            # Timing starts at the first batch seen, so that batch's own time is unknown.
            self._phase, self._phase_started, self._phase_first_step = (epoch, phase), now, step
        self.epoch_bar.setFormat(f"Epoch {epoch} of %m")
        self.batch_bar.setFormat(f"{phase.capitalize()} batch %v of %m")
        self.batch_bar.setRange(0, max(1, steps))
        self.batch_bar.setValue(step)
        elapsed = now - self._epoch_started
        timed = step - self._phase_first_step
        phase_left = ((now - self._phase_started) / timed * (steps - step)
                      if timed >= MIN_TIMED_BATCHES else None)
        if self._epoch_times:  # whole epochs measured: they include validation
            recent = self._epoch_times[-3:]
            per_epoch = sum(recent) / len(recent)
            epoch_left = max(phase_left or 0.0, per_epoch - elapsed)
        elif phase_left is None or phase != "training":
            self.eta_label.setText(f"Epoch {epoch}: estimating the time left…")
            return
        else:
            per_epoch, epoch_left = elapsed + phase_left, phase_left
        run_left = epoch_left + per_epoch * max(0, self.epoch_bar.maximum() - epoch)
        self.eta_label.setText(f"Epoch {epoch}: {duration_text(epoch_left)} left · whole fit: "
                               f"about {duration_text(run_left)} left")

    def set_epoch_seconds(self, seconds: float) -> None:
        self._epoch_times.append(seconds)

    def set_idle(self) -> None:
        """The run ended: the bars say what was done, no batch is in progress."""
        self.eta_label.setText("Not running.")
        self.epoch_bar.setFormat(DONE_FORMAT)
        self._reset_batch_bar()

    def add_epoch(self, epoch: int, train_loss: float | None, val_loss: float | None,
                  train_iou: float | None, val_iou: float | None) -> None:
        """One finished epoch: extend the four curves and the epoch bar."""
        self.loss_plot.add_point("train", epoch, train_loss)
        self.loss_plot.add_point("validation", epoch, val_loss)
        self.iou_plot.add_point("train", epoch, train_iou)
        self.iou_plot.add_point("validation", epoch, val_iou)
        self.epoch_bar.setValue(epoch)

    def set_history(self, rows: list[dict], epochs: int | None = None) -> None:
        """Curves of the epochs a run already did (from its log.csv), of `epochs` in all."""
        if epochs:
            self.epoch_bar.setRange(0, epochs)
            self.epoch_bar.setFormat(DONE_FORMAT)
        for plot in (self.loss_plot, self.iou_plot):
            plot.clear()
        for row in rows:
            self.add_epoch(row["epoch"], row.get("train_loss"), row.get("val_loss"),
                           row.get("train_iou"), row.get("val_iou"))
            if row.get("epoch_time_s"):
                self._epoch_times.append(row["epoch_time_s"])

    def set_best(self, epoch: int, mean_iou: float, per_class: dict[str, float | None]) -> None:
        self.best_label.setText(f"Best epoch: {epoch} · mean validation IoU {mean_iou:.4f}")
        self.best_table.setRowCount(len(per_class))
        for row, (name, value) in enumerate(per_class.items()):
            self.best_table.setItem(row, 0, QTableWidgetItem(name))
            item = QTableWidgetItem("absent" if value is None else f"{value:.4f}")
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.best_table.setItem(row, 1, item)

    def set_resources(self, lr: float | None = None, ram: float | None = None,
                      gpu_util: float | None = None, vram: float | None = None) -> None:
        """Learning rate now; peak RAM, mean GPU use and peak VRAM of the last epoch."""
        if lr is not None:
            self.lr_label.setText(f"Learning rate: {lr:.3g}")
        if ram is not None:
            self._ram_peak = ram
            self._show_ram()
        if gpu_util is not None or vram is not None:
            util = "—" if gpu_util is None else f"{gpu_util:.0f} %"
            self.gpu_label.setText(f"GPU: {util} busy · {bytes_text(vram)} memory at peak")

    def set_ram_now(self, ram: float) -> None:
        self._ram_now = ram
        self._show_ram()

    def _show_ram(self) -> None:
        parts = []
        if self._ram_now is not None:
            parts.append(f"{bytes_text(self._ram_now)} now")
        if self._ram_peak is not None:
            parts.append(f"{bytes_text(self._ram_peak)} peak")
        self.ram_label.setText("RAM: " + " · ".join(parts))

    def append_log(self, line: str) -> None:
        """Add a line; follow the end unless the user scrolled up to read."""
        bar = self.log.verticalScrollBar()
        self._appending = True
        self.log.appendPlainText(line.rstrip())
        if self._follow:
            bar.setValue(bar.maximum())
        self._appending = False

    def _log_scrolled(self, value: int) -> None:
        if not self._appending:
            self._follow = value >= self.log.verticalScrollBar().maximum() - 1

    def show_summary(self, text: str, out: Path | None) -> None:
        self.summary_label.setText(text)
        self._out = out
        self.open_button.setEnabled(out is not None)
        self.summary.show()

    def _open_folder(self) -> None:
        if self._out is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._out)))
