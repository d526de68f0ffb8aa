"""The DLPred window: segment a scan with a fitted model, watch the labels appear, read the report."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.stack_kind import dataset_root_problem
from bone_apps.core.io.volume import Volume
from bone_apps.core.jobs.monitor import gpu_count
from bone_apps.core.predict.reports import PredictReport
from bone_apps.core.predict.settings import InferenceSettings
from bone_apps.dlpred import bridge
from bone_apps.dlpred.dialogs import ask_about_label_scan
from bone_apps.dlpred.inputs import InputsBox
from bone_apps.dlpred.measure import LabelsMeasureView
from bone_apps.dlpred.options import OptionsBox
from bone_apps.dlpred.preview import LiveLabels
from bone_apps.dlpred.results import ResultsView
from bone_apps.dlpred.sample import use_sample
from bone_apps.ui.background import join_worker
from bone_apps.ui.branding import app_icon
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.sample_data import SampleData
from bone_apps.ui.settings import AppSettings
from bone_apps.ui.slice_view import SliceView
from bone_apps.ui.widgets import idle_progress, scroll_column
from bone_apps.ui.worker import JobWorker, dispose


def device_choices() -> list[tuple[str, str]]:
    """(text, engine device) for the device list: automatic, CPU, each GPU, all GPUs."""
    count = gpu_count()
    choices = [("Automatic (a GPU when present)", "auto"), ("CPU", "cpu")]
    choices += [(f"GPU {i}", f"cuda:{i}") for i in range(count)]
    if count > 1:
        choices.append((f"All {count} GPUs", "cuda:" + ",".join(str(i) for i in range(count))))
    return choices


class DLPredWindow(QMainWindow):
    """Segment one scan with a weights file; preview, progress, report, hand-over to IoU."""

    def __init__(self, settings: AppSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("bone_apps DLPred — segment a scan with a fitted model")
        self.setWindowIcon(app_icon("dlpred"))
        self.settings = settings or AppSettings("dlpred")
        self.worker: JobWorker | None = None
        self.report: PredictReport | None = None
        self.output_path: Path | None = None  # the finished output of the last run
        self.iou_window: QMainWindow | None = None
        self.last_error = ""
        self.label_question: QMessageBox | None = None  # the last "looks like a label mask" question
        self._labels_accepted: Path | None = None  # a label-like scan the user chose to predict
        self.live = LiveLabels()
        self.tracker = bridge.Tracker()
        self.sample = SampleData(self, lambda root: use_sample(self, root), self._error)
        self._build()
        self.inputs.start()

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.inputs = InputsBox(self.settings)
        # The fields, by their plain names (tests and the hand-over use them).
        self.scan, self.weights, self.output = self.inputs.scan, self.inputs.weights, self.inputs.output
        self.overwrite, self.model_info = self.inputs.overwrite, self.inputs.model_info
        self.inputs.scan_opened.connect(self._on_scan_opened)
        self.inputs.meta_loaded.connect(self._on_meta_loaded)
        self.options = OptionsBox(self.settings, device_choices())

        self.predict_button = QPushButton("&Predict")
        self.predict_button.setDefault(True)
        self.predict_button.setToolTip("Segment the scan with the model and write the label stack.")
        self.predict_button.clicked.connect(self.predict)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop after the current batch (Esc); nothing is saved under "
                                    "the output's name.")
        QShortcut(QKeySequence.StandardKey.Cancel, self, activated=self.stop)
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        idle_progress(self.progress, "no run yet")
        self.rate_label = QLabel("")
        run_row = QHBoxLayout()
        run_row.addWidget(self.predict_button)
        run_row.addWidget(self.stop_button)
        run_row.addWidget(self.progress, 1)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.sample.bar)
        left_layout.addWidget(self.inputs)
        left_layout.addWidget(self.options)
        left_layout.addLayout(run_row)
        left_layout.addWidget(self.rate_label)
        left_layout.addStretch(1)
        left_scroll = scroll_column(left)
        left_scroll.setMinimumWidth(left.sizeHint().width()
                                    + left_scroll.verticalScrollBar().sizeHint().width())

        self.preview = SliceView(show_follow=True)
        preview_box = QGroupBox("Preview: scan with predicted labels")
        QVBoxLayout(preview_box).addWidget(self.preview)
        self.results = ResultsView()
        self.iou_button = QPushButton("Score in &IoU…")
        self.iou_button.setEnabled(False)
        self.iou_button.setToolTip("Open the IoU app with this output as the prediction, to score "
                                   "it against a reference mask.")
        self.iou_button.clicked.connect(self.open_iou)
        self.measures = LabelsMeasureView()
        self.measure_button = QPushButton("Meas&ure")
        self.measure_button.setEnabled(False)
        self.measure_button.setToolTip("Measure the bone morphometry of the labels just written "
                                       "(BV/TV, BS/BV, Tb.Th, Tb.Sp, Tb.N, Conn.D, in mm), one row "
                                       "per label; save them as JSON or CSV.")
        self.measure_button.clicked.connect(self.measure)
        self.measures.ended.connect(self._on_measure_ended)
        self.result_tabs = QTabWidget()
        self.result_tabs.addTab(self.results, "Report")
        self.result_tabs.addTab(self.measures, "Morphometry")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.measure_button)
        buttons.addWidget(self.iou_button)
        results_box = QGroupBox("Results")
        results_layout = QVBoxLayout(results_box)
        results_layout.addWidget(self.result_tabs, 1)
        results_layout.addLayout(buttons)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(preview_box)
        right.addWidget(results_box)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)
        # The user drags the handle to widen the left column when its paths are long.
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left_scroll)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        em = self.fontMetrics().averageCharWidth()
        self.splitter.setSizes([70 * em, 110 * em])  # in characters: right on any screen density
        right.setSizes([60, 40])
        self.setCentralWidget(self.splitter)

        self.menuBar().addMenu("&File").addAction(self.sample.action)
        self.statusBar().showMessage("Choose a scan and a weights file, then Predict.")
        self.resize(1200, 780)

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def meta(self) -> dict | None:
        """The chosen weights file's metadata, once read."""
        return self.inputs.meta

    def _on_scan_opened(self, volume: Volume | None) -> None:
        if self.worker is None:  # a running prediction keeps its labels on show
            self.live.reset()
            self.preview.set_labels(None)
        self.preview.set_scan(volume)

    def _on_meta_loaded(self, meta: dict | None) -> None:
        if meta is not None:
            self.options.set_model(meta.get("dims"), int(meta.get("patch_depth") or 1),
                                   int(meta.get("required_multiple") or 32))
            settings = InferenceSettings.from_meta(meta)
            self.options.use_settings(settings.chunk, settings.overlap, settings.blend)
            self.preview.set_class_names(bridge.class_names(meta))

    # -- running --------------------------------------------------------------------------------
    def predict(self) -> None:
        """Start the prediction off the GUI thread."""
        if self.worker is not None:
            return
        self.inputs.flush()  # typed a moment ago: take it now (the output may follow the scan)
        scan, weights, output = self.scan.path(), self.weights.path(), self.output.path()
        if scan is None or weights is None or output is None:
            self._error("Choose a scan, a weights file and an output first.")
            return
        problem = dataset_root_problem(scan)
        if problem:
            self._error(problem)
            return
        if not self._labels_confirmed(scan):
            return
        self.inputs.remember()
        self.options.remember()
        is_3d = self.meta is not None and self.meta.get("dims") == "3d"
        try:
            config = bridge.make_config(scan, weights, output, self.options.values(),
                                        self.overwrite.isChecked(), is_3d)
        except BoneAppsError as exc:
            self._error(exc)
            return
        self.tracker = bridge.Tracker()
        self.report, self.output_path = None, None
        self.results.clear()
        self.measures.set_mask(None)
        self.result_tabs.setCurrentWidget(self.results)
        self.iou_button.setEnabled(False)
        self.measure_button.setEnabled(False)
        self.live.reset()
        self.preview.set_labels(self.live)
        self.progress.setRange(0, 0)  # busy until the slices start
        self.rate_label.setText("Starting: reading the model and the scan's statistics…")
        self.worker = JobWorker(lambda stop: bridge.run(config, stop), yielded=self._on_event,
                                returned=self._on_report, errored=self._error, cancelled=self._on_cancelled,
                                finished=self._on_finished)
        self._set_running(True)
        self.statusBar().showMessage(f"Predicting {scan.name} with {weights.name}…")
        self.worker.start()

    def _labels_confirmed(self, scan: Path) -> bool:
        """True when `scan` looks like a scan, or the user chose to predict this label-like stack
        anyway; otherwise ask (a question dialog whose answer predicts again or stops here)."""
        if self._labels_accepted == scan:
            return True
        reason = self.inputs.label_reason_of(scan)
        if reason is None:
            return True
        self.label_question = ask_about_label_scan(self, scan, reason, lambda: self._predict_anyway(scan),
                                                   self._choose_other_scan)
        return False

    def _predict_anyway(self, scan: Path) -> None:
        self._labels_accepted = scan
        self.predict()

    def _choose_other_scan(self) -> None:
        self.statusBar().showMessage("Choose a scan to segment, then Predict.")
        self.scan.edit.setFocus()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.stop_button.setEnabled(False)
            self.rate_label.setText("Stopping after the current batch…")

    def _set_running(self, running: bool) -> None:
        self.predict_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.inputs.setEnabled(not running)
        self.options.setEnabled(not running)

    def _on_event(self, event: object) -> None:
        progress = self.tracker.update(event)
        if progress is None:
            return
        self.progress.setFormat("%v / %m slices")
        self.progress.setRange(0, progress.total)  # 0: busy, before the slices start
        self.progress.setValue(progress.done)
        self.rate_label.setText(progress.text)
        if progress.z is not None and progress.labels is not None:
            self.live.add(progress.z, progress.labels)
            self.preview.slice_ready(progress.z)

    def _on_report(self, report: PredictReport) -> None:
        self.report = report
        self.output_path = bridge.output_of(report)
        self.results.set_rows(bridge.report_rows(report))
        bins = bridge.histogram_of(report)
        if bins is not None:
            self.results.histogram.set_bins(bins, marker=report.threshold)
        if self.output_path is not None:
            self.live.open_output(self.output_path)
            self.preview.refresh()
            self.iou_button.setEnabled(True)
            self.measures.set_mask(self.output_path, report.class_names)
            self.measure_button.setEnabled(True)
        self.rate_label.setText(bridge.done_text(report))
        self.statusBar().showMessage(f"Labels written to {self.output_path}.")

    def _on_cancelled(self) -> None:
        self.rate_label.setText("Stopped.")
        self.statusBar().showMessage(f"Stopped: nothing was saved as {self.output.path()}.")

    def _on_finished(self) -> None:
        self._set_running(False)
        self.preview.flush()
        if self.report is None and self.progress.maximum() == 0:
            idle_progress(self.progress, "no run yet")  # ended before the first slice
        self.worker = dispose(self.worker)

    def _error(self, message: str | BaseException) -> None:
        message = bridge.plain_message(message)
        self.last_error = message
        self.rate_label.setText("")
        self.statusBar().showMessage("Could not predict: see the message.")
        show_error(self, "DLPred", message)

    # -- measuring ------------------------------------------------------------------------------
    def measure(self) -> None:
        """Measure the labels the last run wrote, off the GUI thread, in the Morphometry tab."""
        self.result_tabs.setCurrentWidget(self.measures)
        self.measures.measure()  # a new prediction stops it (its numbers would be stale)
        self.measure_button.setEnabled(self.measures.worker is None)

    def _on_measure_ended(self) -> None:
        self.measure_button.setEnabled(self.output_path is not None and self.worker is None)

    # -- hand-over ------------------------------------------------------------------------------
    def open_iou(self) -> QMainWindow | None:
        """Open the IoU window with this run's output as the prediction."""
        if self.output_path is None:
            return None
        from bone_apps.iou.window import IoUWindow

        window = self.iou_window
        if window is None or not window.isVisible():  # reuse an open one, else a new one
            window = IoUWindow()
        window.prediction.set_path(self.output_path)
        reference = bridge.matching_mask(self.scan.path())
        if reference is not None:
            window.reference.set_path(reference)
        if self.report is not None:  # the names this output was written with
            window.class_names.setText(",".join(self.report.class_names))
        window.show()
        window.raise_()
        self.iou_window = window
        return window

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.worker is not None:
            self.worker.stop()
            join_worker(self.worker)
        self.measures.join()
        self.sample.join()
        self.inputs.wait()
        self.live.reset()
        super().closeEvent(event)
