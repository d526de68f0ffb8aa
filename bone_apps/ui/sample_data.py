""""Try with sample data": write the sample scans of `bone synth` to a folder the user picks,
off the GUI thread, then let the window fill in its fields and say what to press next.

Each window makes one `SampleData(window, use, error)`, puts `sample.bar` (the button and the
hint) in its layout and `sample.action` in a menu. `use(root)` fills the window's fields from
the dataset at `root` (ROOT/scans/<id>, ROOT/masks/<id>) and returns the hint to show.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
)

from bone_apps.core.io.outputs import read_marker
from bone_apps.ui.background import join_worker
from bone_apps.ui.worker import JobWorker, dispose

SAMPLE_SCANS = 4
SAMPLE_SHAPE = (32, 128, 128)  # `bone synth`'s default: written in seconds, fitted in minutes
SAMPLE_FOLDER = "bone_apps_sample"  # made inside a chosen folder that holds other files
SAMPLE_SCAN = "bone_03"  # the scan DLPred segments and IoU scores
DATASET_KIND = "dataset"  # the marker kind of a folder `bone synth` wrote
TITLE = "Try with sample data: choose a folder for the sample scans"
HINT_STYLE = ("QLabel { background: #fff8d6; border: 1px solid #d8c36a; border-radius: 3px; "
              "padding: 4px; color: #3a3000; }")


def sample_root(chosen: Path) -> Path:
    """Where the sample dataset goes: the chosen folder itself when it is empty, new or a
    sample dataset written before; else a `bone_apps_sample` folder inside it (the user's
    own files are never mixed with the samples)."""
    chosen = Path(chosen)
    if not chosen.exists() or not any(chosen.iterdir()):
        return chosen
    marker = read_marker(chosen)
    if marker is not None and marker.get("kind") == DATASET_KIND:
        return chosen
    return chosen / SAMPLE_FOLDER


def sample_scan(root: Path) -> Path:
    """The sample scan DLPred segments and IoU scores."""
    return Path(root) / "scans" / SAMPLE_SCAN


def sample_mask(root: Path) -> Path:
    """The reference mask of `sample_scan(root)`."""
    return Path(root) / "masks" / SAMPLE_SCAN


class SampleData(QObject):
    """The "Try with sample data" button, menu action, progress and hint of one window."""

    def __init__(self, window: QMainWindow, use: Callable[[Path], str],
                 error: Callable[[str], None]) -> None:
        super().__init__(window)
        self.window, self._use, self._error = window, use, error
        self.shape = SAMPLE_SHAPE
        self.worker: JobWorker | None = None
        self.root: Path | None = None  # the sample dataset last written
        tip = (f"Write {SAMPLE_SCANS} small sample micro-CT scans with their masks (as `bone synth` "
               "does) to a folder you choose, fill in the fields and say what to press next.")
        self.action = QAction("Try with &sample data…", window)
        self.action.setToolTip(tip)
        self.action.triggered.connect(self.ask)
        self.button = QPushButton("Try with sample data…")
        self.button.setToolTip(tip)
        self.button.clicked.connect(self.ask)
        self.hint = QLabel()
        self.hint.setObjectName("sampleHint")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet(HINT_STYLE)
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint.hide()
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: the scans are written one after another
        self.progress.setMaximumWidth(160)
        self.progress.hide()
        self.bar = QFrame()
        layout = QHBoxLayout(self.bar)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.hint, 1)
        layout.addStretch(0)
        window.statusBar().addPermanentWidget(self.progress)

    def ask(self) -> None:
        """Ask for a folder, then write the sample scans there."""
        if self.worker is not None:
            return
        start = str(self.root.parent if self.root is not None else Path.home())
        folder = QFileDialog.getExistingDirectory(self.window, TITLE, start)
        if folder:
            self.write(Path(folder))

    def write(self, chosen: Path) -> None:
        """Write the sample scans into `chosen` (see sample_root) off the GUI thread."""
        if self.worker is not None:
            return
        root, shape = sample_root(chosen), tuple(self.shape)

        def job(stop):
            from bone_apps.core.data.synthetic import write_sample_dataset

            write_sample_dataset(root, SAMPLE_SCANS, 0, shape, overwrite=True)
            return root
            yield  # a generator, as JobWorker expects

        self.worker = JobWorker(job, returned=self._on_written, errored=self._on_error,
                                finished=self._on_finished)
        self._set_busy(True)
        self.window.statusBar().showMessage(f"Writing {SAMPLE_SCANS} sample scans to {root}…")
        self.worker.start()

    def is_running(self) -> bool:
        return self.worker is not None

    def show_hint(self, text: str) -> None:
        self.hint.setText(text)
        self.hint.setVisible(bool(text))

    def _set_busy(self, busy: bool) -> None:
        self.button.setEnabled(not busy)
        self.action.setEnabled(not busy)
        self.progress.setVisible(busy)

    def _on_written(self, root: Path) -> None:
        self.root = root
        self.window.statusBar().showMessage(f"Sample scans written to {root}.")
        self.show_hint(self._use(root))

    def _on_error(self, message: str) -> None:
        self.window.statusBar().clearMessage()
        self._error(message)

    def _on_finished(self) -> None:
        self._set_busy(False)
        self.worker = dispose(self.worker)

    def join(self) -> None:
        """Let a running write end (before the window closes)."""
        if self.worker is not None:
            join_worker(self.worker)
