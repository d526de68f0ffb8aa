"""A morphometry view the apps share: voxel size, run and stop, progress, a table, save JSON / CSV.

The measuring itself is a core generator (core/measure/morphometry.py, core/measure/compare.py) run in
a JobWorker; a subclass says which job to run and how to fill the table with its result.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.outputs import write_atomic, write_json_file
from bone_apps.ui.background import join_worker
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.worker import JobWorker, dispose

Job = Callable[[threading.Event], Generator]
# Core's advice names the command-line option; here the same advice names the field.
_VOXEL_OPTION = re.compile(r"give (it|the voxel size to use) in micrometres with --voxel-size\.")


def plain_message(message: str) -> str:
    """A core message with the --voxel-size option replaced by the Voxel size field."""
    return _VOXEL_OPTION.sub(r"enter \1 in micrometres in the Voxel size field, then measure again.",
                             message)


class VoxelSizeField(QDoubleSpinBox):
    """Isotropic voxel size in micrometres; 0 shows "From the file" (the size the mask records)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setRange(0.0, 100000.0)
        self.setDecimals(3)
        self.setSingleStep(1.0)
        self.setSuffix(" µm")
        self.setSpecialValueText("From the file")
        self.setToolTip("Edge of one voxel in micrometres (µm), the same along z, y and x. Leave "
                        "it at “From the file” to use the size the mask's TIFF files record; enter "
                        "it when they record none, or to override it.")

    def voxel_size_um(self) -> tuple[float, float, float] | None:
        """(z, y, x) in micrometres, or None for the size the files record."""
        value = float(self.value())
        return None if value == 0.0 else (value, value, value)


def number_item(text: str) -> QTableWidgetItem:
    """A right-aligned table cell, as numbers read best."""
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


class MeasureView(QWidget):
    """Run a measurement off the GUI thread and show its result in a table.

    Subclasses implement `job()` (the core generator to run, or None after showing why not),
    `fill(result)` and `progress_text(record)`; the first `text_columns` columns fit their text
    and the others share the rest of the width. `result` is the last result shown (None while
    there is none); `ended` fires when a run ends, whatever its outcome.
    """

    ended = Signal()

    def __init__(self, title: str, columns: Sequence[str], button_text: str | None,
                 text_columns: int = 1, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.worker: JobWorker | None = None
        self.result: object | None = None
        self.last_error = ""
        self._stale = False  # the running job's inputs changed: its result must not be shown

        self.voxel_size = VoxelSizeField()
        voxel_label = QLabel("Vo&xel size:")
        voxel_label.setBuddy(self.voxel_size)
        voxel_label.setToolTip(self.voxel_size.toolTip())
        self.measure_button = QPushButton(button_text or "Measure")
        self.measure_button.clicked.connect(self.measure)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop measuring; nothing is shown or saved.")
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not measured yet")
        run_row = QHBoxLayout()
        run_row.addWidget(voxel_label)
        run_row.addWidget(self.voxel_size)
        if button_text is not None:
            run_row.addWidget(self.measure_button)
        else:
            self.measure_button.hide()  # the host window places its own action
        run_row.addWidget(self.stop_button)
        run_row.addWidget(self.progress, 1)

        self.table = QTableWidget(0, len(columns))
        self.table.setHorizontalHeaderLabels(list(columns))
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)  # the numbers share the width
        for column in range(text_columns):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.json_button = QPushButton("Save JSON…")
        self.json_button.setToolTip("Save every measure of every label (with units, voxel size "
                                    "and thickness histograms) as JSON.")
        self.csv_button = QPushButton("Save CSV…")
        self.csv_button.setToolTip("Save the measures as CSV, to open in a spreadsheet.")
        self.json_button.clicked.connect(lambda: self._save_dialog("json"))
        self.csv_button.clicked.connect(lambda: self._save_dialog("csv"))
        save_row = QHBoxLayout()
        save_row.addWidget(self.status, 1)
        save_row.addWidget(self.json_button)
        save_row.addWidget(self.csv_button)

        layout = QVBoxLayout(self)
        layout.addLayout(run_row)
        layout.addWidget(self.table, 1)
        layout.addLayout(save_row)
        self._show_empty("")

    # -- for subclasses -------------------------------------------------------------------------
    def job(self) -> Job | None:
        raise NotImplementedError

    def fill(self, result: object) -> None:
        raise NotImplementedError

    def progress_text(self, record: object) -> str:
        return f"{getattr(record, 'stage', 'measuring')}…"

    def default_save_path(self, kind: str) -> str:
        return ""

    # -- running --------------------------------------------------------------------------------
    def measure(self) -> None:
        """Start measuring off the GUI thread (nothing happens while a run is going on)."""
        if self.worker is not None:
            return
        job = self.job()
        if job is None:
            return
        self._show_empty("Measuring…")
        self._stale = False
        self.progress.setRange(0, 0)  # busy until the first record
        self.worker = JobWorker(job, yielded=self._on_progress, returned=self._on_result,
                                errored=self._on_error, cancelled=self._on_cancelled,
                                finished=self._on_finished)
        self._set_running(True)
        self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.stop_button.setEnabled(False)

    def clear(self, message: str = "") -> None:
        """Forget the result shown (and stop a run, whose result will not be shown)."""
        if self.worker is not None:
            self._stale = True
            self.worker.stop()
        self._show_empty(message)

    def join(self) -> None:
        """Stop a run and wait for its thread (for closing the window)."""
        if self.worker is not None:
            self.worker.stop()
            join_worker(self.worker)

    def _set_running(self, running: bool) -> None:
        self.measure_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.voxel_size.setEnabled(not running)

    def _show_empty(self, message: str) -> None:
        self.result = None
        self.table.setRowCount(0)
        self.status.setText(message)
        self.json_button.setEnabled(False)
        self.csv_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("not measured yet")

    def _on_progress(self, record: object) -> None:
        if self._stale:
            return
        self.progress.setFormat("%p %")
        self.progress.setRange(0, max(1, record.total))
        self.progress.setValue(record.done)
        self.status.setText(self.progress_text(record))

    def _on_result(self, result: object) -> None:
        if self._stale:
            return
        self.result = result
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self.fill(result)
        self.json_button.setEnabled(True)
        self.csv_button.setEnabled(True)

    def _on_error(self, message: str) -> None:
        if self._stale:
            return
        self._show_empty("Not measured: see the message.")
        self.last_error = plain_message(message)
        if "voxel size" in self.last_error.lower():
            self.voxel_size.setFocus()
            self.voxel_size.selectAll()
        show_error(self, self.title, self.last_error)

    def _on_cancelled(self) -> None:
        if not self._stale:
            self._show_empty("Stopped: nothing was measured.")

    def _on_finished(self) -> None:
        self._set_running(False)
        self.worker = dispose(self.worker)
        self.ended.emit()

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save the result as JSON or CSV, by the file's suffix, atomically.

        The save dialog has asked before replacing a file; a JSON file is still replaced only
        when bone_apps wrote it (ForeignFilesError otherwise).
        """
        if self.result is None:
            raise ValueError("nothing to save yet")
        path = Path(path)
        if path.suffix.lower() == ".json":
            write_json_file(path, self.result.to_dict(), overwrite=True)
        else:
            write_atomic(path, self.result.csv_text())
        self.status.setText(f"Saved {path}")
        return path

    def _save_dialog(self, kind: str) -> None:
        file, _ = QFileDialog.getSaveFileName(self, "Save measures", self.default_save_path(kind),
                                              f"{kind.upper()} (*.{kind})")
        if file:
            try:
                self.save(Path(file))
            except BoneAppsError as exc:  # a foreign JSON file, a full disk, a read-only folder
                self.last_error = str(exc)
                self.status.setText("Not saved: see the message.")
                show_error(self, self.title, str(exc))
