""""Try with sample data": write the sample scans of `bone synth` into a folder the user picks,
off the GUI thread, so a first run needs neither a terminal nor scans of one's own.

A folder already holding a sample dataset bone_apps wrote is used as it is (so DLPred finds
the model DLFit fitted there); a folder holding the user's files is refused with one dialog.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QPushButton, QWidget

from bone_apps.core.outputs import read_marker
from bone_apps.ui.background import BackgroundTask, join_worker

TEXT = "Try w&ith sample data…"
TIP = ("Write a few small sample scans with their masks into a folder you choose and fill in "
       "the fields, to try the app without scans of your own.")
FIT_FOLDER = "fit"  # DLFit's output inside the sample folder, where DLPred looks for a model


def choose_folder(parent: QWidget, start: Path) -> Path | None:
    """Ask for the folder to write the sample data into; None when cancelled."""
    folder = QFileDialog.getExistingDirectory(
        parent, "Choose an empty or new folder for the sample data", str(start))
    return Path(folder) if folder else None


def sample_ids(folder: Path) -> list[str]:
    """The scans of a sample dataset bone_apps wrote into `folder` (none when it has none)."""
    marker = read_marker(folder)
    scans = folder / "scans"
    if marker is None or marker.get("kind") != "dataset" or not scans.is_dir():
        return []
    return sorted(p.name for p in scans.iterdir() if p.is_dir() and (folder / "masks" / p.name).is_dir())


def write_samples(folder: Path) -> Path:
    """Write the sample dataset into `folder` unless bone_apps already wrote one there."""
    if not sample_ids(folder):
        from bone_apps.core.synthetic import write_sample_dataset

        write_sample_dataset(folder)
    return folder


class SampleData(QObject):
    """The "Try with sample data" action and button of a window.

    `written(Path)` fires on the GUI thread with the folder once it holds the sample dataset;
    `error(str)` with one sentence when it could not be written.
    """

    written = Signal(object)
    error = Signal(str)

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.window = parent
        self.task: BackgroundTask | None = None
        self.action = QAction(TEXT, parent)
        self.action.setToolTip(TIP)
        self.action.setStatusTip(TIP)
        self.action.triggered.connect(lambda: self.start())

    def button(self) -> QPushButton:
        """A button doing what the action does."""
        button = QPushButton(TEXT)
        button.setToolTip(TIP)
        button.clicked.connect(lambda: self.start())
        self.action.enabledChanged.connect(button.setEnabled)
        return button

    def start(self, folder: Path | None = None) -> None:
        """Ask for a folder (unless given) and write the sample data there in the background."""
        if self.task is not None:
            return
        if folder is None:
            folder = choose_folder(self.window, Path.home())
            if folder is None:
                return
        self.action.setEnabled(False)
        self.window.statusBar().showMessage(f"Writing sample scans to {folder}…")
        self.task = BackgroundTask(self, lambda: write_samples(folder), self.written.emit,
                                   self.error.emit)
        self.task.ended.connect(self._on_ended)

    def _on_ended(self) -> None:
        self.task = None
        self.action.setEnabled(True)

    def wait(self) -> None:
        """Let a write still running end (for closing the window)."""
        if self.task is not None:
            join_worker(self.task.worker)
