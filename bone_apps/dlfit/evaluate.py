"""DLFit's experiments (Advanced mode): a scan-level cross-validation (the paper's Table 6) or a
benchmark grid of architectures x encoders x patch sizes (§2.5.2, ranked as in Table 7), run
with the window's current options by core.evaluate (the engine of `bone cv` and `bone bench`)
off the GUI thread, showing each fit's progress and the tables as results arrive. Stop leaves
the experiment resumable: Start again with the same options continues it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.data.pairs import pairs_from_paths
from bone_apps.core.errors import BoneAppsError, OptionError
from bone_apps.core.evaluate.bench import BenchResult, BenchUpdated, bench
from bone_apps.core.evaluate.cv import CVConfig, CVResult, CVUpdated, cross_validate
from bone_apps.core.evaluate.results import BENCH, CV, read_experiment
from bone_apps.dlfit.experiment_form import CV_TAB, GRID_TAB, ExperimentForm
from bone_apps.dlfit.experiment_progress import ExperimentProgress
from bone_apps.dlfit.tips import plain_options
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.experiment_views import BenchView, CVView
from bone_apps.ui.pickers import PathPicker
from bone_apps.ui.worker import JobFactory, JobWorker, dispose

if TYPE_CHECKING:
    from bone_apps.dlfit.window import DLFitWindow

# The engine names command-line options; the dialog names its own fields.
FLAGS = {"--folds": "“Folds”", "--seeds": "“Seeds”", "--order-seed": "“Order seed”",
         "--test-scans": "the “Test scans” list", "--out": "“Experiment folder”",
         "--configs": "the grid", "--grid": "the grid"}
CONTINUE = ("Press Start again with the same options and folder to continue: finished fits are "
            "kept and the unfinished one resumes from its checkpoint.")
STOPPED = "Stopped. " + CONTINUE
INTRO = ("Every fit uses the options of the DLFit window (Advanced mode: model, patches, loss, "
         "epochs, device, …) and goes into the experiment folder, as bone cv and bone bench do; "
         "held-out scans are predicted and scored against their masks.")


def experiment_message(message: str | BaseException) -> str:
    """An engine message with the option names of this dialog and of the DLFit window."""
    if isinstance(message, OptionError):
        message = message.shown(as_label=True)
    message = re.sub(r"--[a-z][a-z-]*", lambda m: FLAGS.get(m.group(0), m.group(0)), str(message))
    return plain_options(message)


class ExperimentDialog(QDialog):
    """Cross-validation or benchmark grid of the DLFit window's current options.

    `shown(record)` fires on the GUI thread after each record of the running experiment was
    shown; `result` holds the experiment's CVResult or BenchResult once it ended.
    """

    shown = Signal(object)

    def __init__(self, window: DLFitWindow) -> None:
        super().__init__(window)
        self.setWindowTitle("DLFit — cross-validate or benchmark")
        self.window_ = window
        self.worker: JobWorker | None = None
        self.result: CVResult | BenchResult | None = None
        self.last_error = ""
        self.progress = ExperimentProgress()
        self._build()
        window.installEventFilter(self)  # the DLFit window closing stops a running experiment
        window.pairs.changed.connect(self.refresh_choices)
        window.advanced.w["dims"].currentIndexChanged.connect(self.refresh_choices)
        self.refresh_choices()
        self._show_folder()

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        self.form = ExperimentForm()

        self.folder = PathPicker("Experiment folder: fits, predictions and the results",
                                 self.window_.settings, "experiment_folder",
                                 "Each fit goes into a folder of its own here; run again with the "
                                 "same options to continue after a stop.",
                                 folder_title="Choose an experiment folder")
        self.folder.file_button.hide()
        self.folder.changed.connect(self._show_folder)
        self.start_button = QPushButton("&Start")
        self.start_button.setToolTip("Start, or continue the experiment in the folder.")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("S&top")
        self.stop_button.setToolTip("End at the next safe point; Start continues from there.")
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)

        self.run_label = QLabel("No experiment running.")
        self.run_label.setWordWrap(True)
        self.runs_bar = QProgressBar()
        self.runs_bar.setFormat("%v of %m fits")
        self.stage_label = QLabel()
        self.stage_label.setWordWrap(True)
        self.stage_bar = QProgressBar()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        setup = QWidget()
        left = QVBoxLayout(setup)
        left.addWidget(intro)
        left.addWidget(self.form, 1)
        folder_row = QFormLayout()
        folder_row.addRow("Experiment &folder:", self.folder)
        left.addLayout(folder_row)
        left.addLayout(buttons)
        for widget in (self.run_label, self.runs_bar, self.stage_label, self.stage_bar):
            left.addWidget(widget)
        left.addWidget(self.log, 1)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setMinimumWidth(1)  # a long path never widens the dialog
        self.cv_view = CVView()
        self.bench_view = BenchView()
        self.results = QStackedWidget()
        self.results.addWidget(self.cv_view)
        self.results.addWidget(self.bench_view)
        self.form.currentChanged.connect(self.results.setCurrentIndex)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.status)
        right_layout.addWidget(self.results, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(setup)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([460, 820])
        QVBoxLayout(self).addWidget(splitter)
        self.resize(1280, 800)
        self._set_running(False)

    def refresh_choices(self) -> None:
        """Scans of the pairs table and architectures of the fitting mode, keeping the ticks."""
        try:
            ids = [p.id for p in pairs_from_paths([(s, m) for s, m, _ in self.window_.pairs.rows()])]
        except BoneAppsError:
            ids = []
        self.form.refresh(ids, self.window_.advanced.values())

    # -- the experiment -------------------------------------------------------------------------
    def experiment(self) -> JobFactory:
        """The job factory of the experiment the fields describe (cross-validation or grid).

        Raises:
            BoneAppsError: a field or an option of the DLFit window is invalid.
        """
        window = self.window_
        if not window.is_advanced():
            raise BoneAppsError("Switch DLFit to Advanced mode first: experiments use its options.")
        folder = self.folder.path()
        if folder is None:
            raise BoneAppsError("Choose an experiment folder for the fits and their results first.")
        problems = window.pairs.problems()
        if problems:
            raise BoneAppsError("Some pairs cannot be used; fix or remove them:\n" + "\n".join(problems))
        template = window.config().replace(out=str(folder))
        template.validate()
        config = self.form.config(template, str(folder))
        if isinstance(config, CVConfig):
            return lambda stop: cross_validate(config, stop)
        return lambda stop: bench(config, stop)

    def start(self) -> None:
        """Start (or continue) the experiment off the GUI thread."""
        if self.worker is not None:
            return
        try:
            factory = self.experiment()
        except BoneAppsError as exc:
            self._error(exc)
            return
        self.folder.remember()
        self.result, self.last_error = None, ""
        self.progress = ExperimentProgress()
        self.log.clear()
        self.status.setText("Running…")
        self.worker = JobWorker(factory, yielded=self._on_record, returned=self._on_result,
                                errored=self._error, cancelled=self._on_cancelled,
                                finished=self._on_finished)
        self._set_running(True)
        self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.status.setText("Stopping at the next safe point…")

    def is_running(self) -> bool:
        return self.worker is not None

    def wait(self, msecs: int = 600_000) -> None:
        if self.worker is not None:
            self.worker.wait(msecs)

    def _on_record(self, record: object) -> None:
        if isinstance(record, CVUpdated):
            self.cv_view.show_cv(record.data)
        elif isinstance(record, BenchUpdated):
            self.bench_view.show_bench(record.data)
        else:
            self._show_progress(record)
        self.shown.emit(record)

    def _show_progress(self, record: object) -> None:
        for line in self.progress.follow(record):
            self.log.appendPlainText(line)
        state = self.progress.state
        self.run_label.setText(state.run_text or "Planning the experiment…")
        self.runs_bar.setRange(0, max(1, state.runs))
        self.runs_bar.setValue(state.runs_done)
        self.stage_label.setText(state.stage_text)
        self.stage_bar.setRange(0, state.total)  # 0 of 0: busy
        self.stage_bar.setValue(state.done)

    def _on_result(self, result: CVResult | BenchResult) -> None:
        self.result = result
        files = ", ".join(p.name for p in result.files.values() if p is not None)
        self.status.setText(STOPPED if result.status == "stopped" else
                            f"Finished: {files} written in the experiment folder (the IoU "
                            "window's Experiments tab opens them).")
        self.status.setToolTip(str(result.out))
        if result.status == "completed":
            self.stage_bar.setRange(0, 1)
            self.stage_bar.setValue(1)

    def _on_cancelled(self) -> None:
        self.status.setText("Stopped while the scans were being checked: no fit had begun.")

    def _on_finished(self) -> None:
        self.worker = dispose(self.worker)
        self._set_running(False)
        if self.result is None and self.last_error:
            self.status.setText("Not finished: see the message. " + CONTINUE)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for widget in (self.form, self.folder):
            widget.setEnabled(not running)
        if not running and self.stage_bar.maximum() == 0:  # not left busy
            self.stage_bar.setRange(0, 1)

    def _show_folder(self) -> None:
        """A folder holding an experiment shows its results (to continue it, or look)."""
        folder = self.folder.path()
        if self.worker is not None or folder is None or not folder.is_dir():
            return
        try:
            found = read_experiment(folder)
        except BoneAppsError:
            return
        self.form.setCurrentIndex(CV_TAB if found.kind == CV else GRID_TAB)
        if found.kind == BENCH:
            self.bench_view.show_bench(found.data)
        else:
            self.cv_view.show_cv(found.data)
        self.status.setText(f"{found.path} holds this {'finished' if found.complete else 'unfinished'} "
                            f"{found.kind}." + ("" if found.complete else " Start continues it with "
                                               "the same options."))

    def _error(self, message: str | BaseException) -> None:
        self.last_error = experiment_message(message)
        show_error(self, "DLFit", self.last_error)

    # -- closing --------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self.window_ and event.type() == QEvent.Type.Close:
            self.stop()
            self.wait()
        return False


def open_experiments(window: DLFitWindow, dialog: ExperimentDialog | None) -> ExperimentDialog:
    """Show the experiment dialog of `window` (made once, then shown again with its progress)."""
    if dialog is None:
        dialog = ExperimentDialog(window)
    dialog.refresh_choices()
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
