"""The IoU window: pick a reference and a prediction, score them, read and export the results."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.io.volume import Volume, check_same_shape, open_volume
from bone_apps.core.score.metrics import IoUResult
from bone_apps.core.score.scoring import ScoreProgress, score_stacks
from bone_apps.iou.errors_tab import ErrorsTab
from bone_apps.iou.evaluation_tab import EvaluationTab
from bone_apps.iou.export import ScoresExport
from bone_apps.iou.morphometry_tab import MorphometryTab
from bone_apps.iou.sample import use_sample
from bone_apps.ui.branding import app_icon
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.pickers import PathPicker
from bone_apps.ui.plot import LinePlot
from bone_apps.ui.sample_data import SampleData
from bone_apps.ui.settings import AppSettings
from bone_apps.ui.widgets import idle_progress
from bone_apps.ui.worker import JobWorker, dispose

COLUMNS = ("Class", "IoU", "Dice", "Reference voxels", "Predicted voxels")
STALE_STYLE = "color: #b00020;"


class IoUWindow(ScoresExport, QMainWindow):
    """Class-wise and mean IoU / Dice of a predicted label stack against a reference."""

    def __init__(self, settings: AppSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("bone_apps IoU — score a segmentation against a reference")
        self.setWindowIcon(app_icon("iou"))
        self.settings = settings or AppSettings("iou")
        self.worker: JobWorker | None = None
        self.result: IoUResult | None = None
        self._volumes: tuple[Volume, Volume] | None = None  # the scored pair, opened
        # What the result on show was computed from: (reference, prediction, names, ignore).
        self.scored: tuple[Path, Path, str, bool] | None = None
        self.pending = self.scored  # the same, for the run in progress
        self._last_edited = "prediction"  # the mask field the user changed last
        self.last_error = ""
        self.sample = SampleData(self, lambda root: use_sample(self, root), self._error)
        self._build()

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.reference = PathPicker(
            "Reference mask: TIFF folder or file, OME-Zarr, NIfTI or HDF5", self.settings,
            "reference", "The ground-truth labels (for example a manual segmentation).")
        self.prediction = PathPicker(
            "Predicted mask: TIFF folder or file, OME-Zarr, NIfTI or HDF5", self.settings,
            "prediction", "The labels to score, for example the output of DLPred.")
        self.class_names = QLineEdit(self.settings.get("class_names", "background,bone,pores"))
        self.class_names.setToolTip(
            "Names of labels 0, 1, 2, … separated by commas. They also declare how many classes "
            "there are: a label outside them is reported as an error. Leave empty to count every "
            "label found as its own class.")
        self.ignore_background = QCheckBox("Leave background (label 0) out of the means")
        self.ignore_background.setToolTip(
            "Background usually dominates a scan and inflates the mean; tick to average only "
            "the other classes.")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setToolTip("auto uses an NVIDIA GPU when one is present; both give identical "
                               "numbers.")
        form = QFormLayout()
        form.addRow("&Reference:", self.reference)
        form.addRow("&Prediction:", self.prediction)
        form.addRow("Class &names:", self.class_names)
        form.addRow("", self.ignore_background)
        form.addRow("&Device:", self.device)
        inputs = QGroupBox("Masks to compare")
        inputs.setLayout(form)

        self.compute_button = QPushButton("&Compute")
        self.compute_button.setDefault(True)
        self.compute_button.setToolTip("Score the prediction against the reference, slice by slice.")
        self.compute_button.clicked.connect(self.compute)
        self.cancel_button = QPushButton("C&ancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        idle_progress(self.progress, "no run yet")
        run_row = QHBoxLayout()
        run_row.addWidget(self.compute_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.progress, 1)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.mean_label = QLabel("Mean IoU: —    Mean Dice: —")
        self.mean_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.mean_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.mean_label.setFont(font)
        self.pair_label = QLabel()
        self.pair_label.setWordWrap(True)
        self.pair_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.pair_label.setToolTip("The reference and prediction these scores belong to; export "
                                   "is possible only while the fields still name them.")
        self.copy_button = QPushButton("Cop&y table")
        self.csv_button = QPushButton("Save &CSV…")
        self.json_button = QPushButton("Save &JSON…")
        for button in (self.copy_button, self.csv_button, self.json_button):
            button.setEnabled(False)
        self.copy_button.clicked.connect(self.copy_table)
        self.csv_button.clicked.connect(lambda: self._save_dialog("csv"))
        self.json_button.clicked.connect(lambda: self._save_dialog("json"))
        export_row = QHBoxLayout()
        export_row.addWidget(self.mean_label, 1)
        for button in (self.copy_button, self.csv_button, self.json_button):
            export_row.addWidget(button)
        results = QWidget()
        results_layout = QVBoxLayout(results)
        results_layout.setContentsMargins(0, 0, 0, 0)
        results_layout.addWidget(self.pair_label)
        results_layout.addWidget(self.table)
        results_layout.addLayout(export_row)

        self.plot = LinePlot("Mean IoU per slice: where the prediction fails", "slice",
                             "mean IoU", y_range=(0.0, 1.0))
        self.plot.setToolTip("Each point is the mean IoU of one slice; dips show the slices to "
                             "inspect. Click a point to see that slice's errors.")
        self.plot.clicked.connect(self._show_slice)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(results)
        splitter.addWidget(self.plot)
        splitter.setStretchFactor(1, 1)
        self.morphometry = MorphometryTab(self._morphometry_inputs)
        self.errors = ErrorsTab()
        self.tabs = QTabWidget()
        self.tabs.addTab(splitter, "&Scores")
        self.tabs.addTab(self.errors, "&Where it fails")
        self.tabs.addTab(self.morphometry, "M&orphometry")
        self.experiments = EvaluationTab(self.settings)  # a cv.json or bench.json opened
        self.tabs.addTab(self.experiments, "Experimen&ts")
        # Numbers of one pair are never shown for another, nor exported under its paths.
        for signal in (self.reference.changed, self.prediction.changed, self.class_names.textChanged,
                       self.ignore_background.toggled):
            signal.connect(self._on_inputs_changed)
        self.reference.changed.connect(lambda _: self._edited("reference"))
        self.prediction.changed.connect(lambda _: self._edited("prediction"))
        self._clear_result()

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(self.sample.bar)
        layout.addWidget(inputs)
        layout.addLayout(run_row)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self.menuBar().addMenu("&File").addAction(self.sample.action)
        self.statusBar().showMessage("Choose a reference and a prediction, then Compute.")
        self.resize(900, 720)

    # -- work -----------------------------------------------------------------------------------
    def compute(self) -> None:
        """Start scoring off the GUI thread."""
        if self.worker is not None:
            return
        reference, prediction = self.reference.path(), self.prediction.path()
        if reference is None or prediction is None:
            self._error("Choose both a reference and a prediction mask first.")
            return
        names = self._class_names()
        ignore, device = self.ignore_background.isChecked(), self.device.currentText()
        self.reference.remember()
        self.prediction.remember()
        self.settings.set("class_names", self.class_names.text())
        self._clear_result()  # a failed or stopped run must not leave the last pair's numbers
        self.pending = self._inputs_key()
        # A size mismatch names the mask changed last as the one to choose again.
        changed_reference = self._last_edited == "reference"

        def job(stop):
            ref, pred = open_volume(reference, role="mask"), open_volume(prediction, role="mask")
            if changed_reference:
                check_same_shape(pred, ref, what="reference", of="prediction")
            result = yield from score_stacks(ref, pred, class_names=names,
                                             ignore_background=ignore, device=device, stop=stop)
            return result, ref, pred  # opened here, off the GUI thread, for "Where it fails"

        self.worker = JobWorker(job, yielded=self._on_progress, returned=self._on_result,
                                errored=self._error, cancelled=self._on_cancelled,
                                finished=self._on_finished)
        self._set_running(True)
        self.progress.setRange(0, 0)  # busy until the first slice is counted
        self.morphometry.clear("Measure both masks to compare their morphometry.")
        self.statusBar().showMessage(f"Scoring {prediction.name} against {reference.name}…")
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _class_names(self) -> list[str] | None:
        return [n.strip() for n in self.class_names.text().split(",") if n.strip()] or None

    def _morphometry_inputs(self) -> tuple[Path | None, Path | None, tuple[str, ...]]:
        return self.reference.path(), self.prediction.path(), tuple(self._class_names() or ())

    def _inputs_key(self) -> tuple[Path | None, Path | None, str, bool]:
        names = ",".join(self._class_names() or ())
        return self.reference.path(), self.prediction.path(), names, self.ignore_background.isChecked()

    def _edited(self, field: str) -> None:
        self._last_edited = field

    def _on_inputs_changed(self) -> None:
        self.morphometry.clear("The masks or names changed: measure both again.")
        self._update_export()

    def _clear_result(self) -> None:
        """Empty the table, the means, the plot and the pair shown; nothing to export."""
        self.result, self.scored, self._volumes = None, None, None
        self.errors.clear("No scores yet: Compute, then click a slice in the plot to see it here.")
        self.table.setRowCount(0)
        self.mean_label.setText("Mean IoU: —    Mean Dice: —")
        self.plot.clear()
        self.pair_label.setText("No scores yet: choose a reference and a prediction, then Compute.")
        self.pair_label.setStyleSheet("")
        self._update_export()

    def _update_export(self) -> None:
        """Export only the result on show, and only while the fields still name its pair.

        A change of the masks, the class names or the background choice after a result greys
        export out and says so; changing them back to the scored pair allows it again.
        """
        current = self.scored is not None and self._inputs_key() == self.scored
        for button in (self.copy_button, self.csv_button, self.json_button):
            button.setEnabled(current)
        if self.scored is None:
            return
        reference, prediction = self.scored[0], self.scored[1]
        text = f"Scores of prediction {prediction} against reference {reference}."
        if not current:
            text += " The fields have changed since: Compute again to score and export them."
            self.errors.clear("The fields have changed since the scores: Compute again to see "
                              "where the prediction fails.")
        elif not self.errors.has_pair() and self._volumes is not None and self.result is not None:
            classes = [(c.label, c.name) for c in self.result.classes]
            self.errors.show_pair(*self._volumes, classes)
        self.pair_label.setText(text)
        self.pair_label.setStyleSheet("" if current else STALE_STYLE)

    def _set_running(self, running: bool) -> None:
        self.compute_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_progress(self, progress: ScoreProgress) -> None:
        self.progress.setFormat("%v / %m slices")
        self.progress.setMaximum(max(1, progress.total))
        self.progress.setValue(progress.done)

    def _on_result(self, outcome: tuple[IoUResult, Volume, Volume]) -> None:
        result, *volumes = outcome
        self.result, self.scored, self._volumes = result, self.pending, tuple(volumes)
        self.table.setRowCount(len(result.classes))
        for row, c in enumerate(result.classes):
            cells = (f"{c.label}: {c.name}", _score(c.iou), _score(c.dice),
                     f"{c.reference_voxels:,}", f"{c.predicted_voxels:,}")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        scope = " (background left out)" if result.ignore_background else ""
        self.mean_label.setText(f"Mean IoU: {_score(result.mean_iou)}    "
                                f"Mean Dice: {_score(result.mean_dice)}{scope}")
        self.plot.set_series("mean IoU", list(enumerate(result.slice_mean_iou)))
        self._update_export()
        self.statusBar().showMessage(f"Scored {result.voxels:,} voxels in "
                                     f"{len(result.slice_mean_iou)} slices.")

    def _show_slice(self, x: float) -> None:
        """Show slice x of the scored pair in "Where it fails"."""
        if self.errors.has_pair():
            self.errors.set_z(int(round(x)))
            self.tabs.setCurrentWidget(self.errors)

    def _on_cancelled(self) -> None:
        # A method, not a lambda: PySide runs a plain callable in the emitting (worker) thread.
        self.statusBar().showMessage("Cancelled.")

    def _on_finished(self) -> None:
        self._set_running(False)
        if self.result is None:
            idle_progress(self.progress, "no result")
        self.worker = dispose(self.worker)

    def _error(self, message: str) -> None:
        self.last_error = message
        self.statusBar().showMessage("Could not score: see the message.")
        show_error(self, "IoU", message)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.worker is not None:
            self.worker.stop()
            self.worker.wait()
        self.morphometry.join()
        self.sample.join()
        super().closeEvent(event)


def _score(value: float | None) -> str:
    return "absent" if value is None else f"{value:.4f}"
