"""IoU's Experiments tab: a cv.json (`bone cv`, DLFit's cross-validation) or bench.json (`bone
bench`, DLFit's benchmark grid) opened and shown as the paper shows them: Table 6 with the
per-scan mIoU by fold (Fig. 9 style) and the per-scan rows, or the benchmark's rows with the
weighted ranking and Table 7's sweep."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.evaluate.results import CV, ExperimentResults, read_experiment
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.experiment_views import BenchView, CVView
from bone_apps.ui.pickers import accept_url_drag, dropped_path
from bone_apps.ui.settings import AppSettings

RESULTS_TITLE = "Choose the cv.json or bench.json of a cross-validation or benchmark"
RESULTS_FILTER = "Experiment results (cv.json bench.json *.json);;All files (*)"


class EvaluationTab(QWidget):
    """Open an experiment's results and show their tables and plot."""

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.results: ExperimentResults | None = None
        self.last_error = ""

        self.open_button = QPushButton("Open res&ults…")
        self.open_button.setToolTip("Open the cv.json written by bone cv (or DLFit's "
                                    "cross-validation) or the bench.json written by bone bench, "
                                    "or drop one here.")
        self.open_button.clicked.connect(self._open_dialog)
        self.file_label = QLabel()
        self.file_label.setWordWrap(True)
        self.file_label.setMinimumWidth(1)  # a long path never widens the window
        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.file_label, 1)

        self.empty = QLabel("Open the cv.json of a cross-validation or the bench.json of a "
                            "benchmark to see its tables.")
        self.empty.setWordWrap(True)

        self.cv_view = CVView()
        self.bench_view = BenchView()

        self.pages = QStackedWidget()
        for page in (self.empty, self.cv_view, self.bench_view):
            self.pages.addWidget(page)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.pages, 1)
        self.setAcceptDrops(True)

    def open_results(self, path: str | Path) -> bool:
        """Show the results in `path` (a cv.json, a bench.json or the folder holding one); a
        file that cannot be shown gives one dialog and leaves what was shown."""
        try:
            results = read_experiment(path)
        except BoneAppsError as exc:
            self.last_error = str(exc)
            show_error(self, "IoU", self.last_error)
            return False
        self.last_error = ""
        self.results = results
        self.settings.set("results_folder", str(results.folder))
        if results.kind == CV:
            self.cv_view.show_cv(results.data)
            self.pages.setCurrentWidget(self.cv_view)
        else:
            self.bench_view.show_bench(results.data)
            self.pages.setCurrentWidget(self.bench_view)
        self.file_label.setText(_describe(results))
        self.file_label.setToolTip(str(results.path))
        return True

    def _open_dialog(self) -> None:
        start = self.settings.get("results_folder") or str(Path.home())
        file, _ = QFileDialog.getOpenFileName(self, RESULTS_TITLE, start, RESULTS_FILTER)
        if file:
            self.open_results(file)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        accept_url_drag(event)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        path = dropped_path(event)
        if path:
            self.open_results(path)


def _describe(results: ExperimentResults) -> str:
    """One line about the opened file: what it is, where, and whether it is finished."""
    data = results.data
    if results.kind == CV:
        folds, seeds = data["folds"], data["seeds"]
        fits = len(data.get("fits") or [])
        what = (f"Cross-validation: {len(folds)} folds of {', '.join(str(len(f)) for f in folds)} "
                f"test scans × {len(seeds)} seed(s) ({', '.join(str(s) for s in seeds)})")
        total = len(folds) * len(seeds)
    else:
        fits, total = len(data["rows"]), len(data.get("configs") or data["rows"])
        tests = data.get("test_scans")
        what = f"Benchmark: {total} configuration(s)" + (
            f" scored on {', '.join(tests)}" if tests else "")
    state = "" if results.complete else f"; unfinished: {fits} of {total} fits done"
    return f"{what}{state}.\n{results.path}"

