"""A path field for a scan or mask: type it, browse for a folder or a TIFF, or drop it in."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from bone_apps.ui.settings import AppSettings

# Files a scan or mask may be (an OME-Zarr image is a folder: Folder...).
VOLUME_FILTER = ("Volumes (*.tif *.tiff *.TIF *.TIFF *.nii *.nii.gz *.h5 *.hdf5);;"
                 "TIFF stacks (*.tif *.tiff *.TIF *.TIFF);;All files (*)")
WEIGHTS_FILTER = "Weights (*.pth *.pt);;All files (*)"
# What prediction runs: bone_apps weights, or an ONNX model written by `bone export`.
MODEL_FILTER = "Models (*.pth *.pt *.onnx);;All files (*)"
WEIGHTS_TITLE = "Choose a weights file (.pth)"
OUTPUT_TITLE = "Choose an output folder"
DATASET_FOLDERS = ("scans", "masks")  # inputs of a dataset: nothing is ever saved inside them


def save_folder(beside: Path | None, last: str | Path | None = None) -> Path:
    """Where to suggest saving a file about `beside`: its folder, unless that lies in a
    dataset's scans/ or masks/ folder; then the last folder used, else the dataset's root."""
    if beside is not None:
        folder = Path(beside).parent
        inside = [p for p in (folder, *folder.parents) if p.name in DATASET_FOLDERS]
        if not inside:
            return folder
        if last and Path(last).is_dir() and not any(
                p.name in DATASET_FOLDERS for p in (Path(last), *Path(last).parents)):
            return Path(last)
        return inside[-1].parent
    return Path(last) if last and Path(last).is_dir() else Path.home()


def accept_url_drag(event: QDragEnterEvent) -> None:
    """Accept a drag that carries files or folders (dragEnterEvent of a drop target)."""
    if event.mimeData().hasUrls():
        event.acceptProposedAction()


def dropped_path(event: QDropEvent) -> str | None:
    """The local file or folder dropped (the drop accepted), or None."""
    urls = event.mimeData().urls()
    if urls and urls[0].isLocalFile():
        event.acceptProposedAction()
        return urls[0].toLocalFile()
    return None


class PathPicker(QWidget):
    """Line edit + "Folder..." + "File..." buttons; accepts a dropped folder or file.

    `changed(str)` fires when the path changes. The last folder used is remembered under
    `settings_key` in `settings`.
    """

    changed = Signal(str)

    def __init__(self, placeholder: str, settings: AppSettings, settings_key: str,
                 tooltip: str = "", file_filter: str = VOLUME_FILTER,
                 parent: QWidget | None = None, *, folder_title: str = "Choose a folder of TIFF slices",
                 file_title: str = "Choose one multi-page TIFF file") -> None:
        super().__init__(parent)
        self._settings, self._key, self._filter = settings, settings_key, file_filter
        self.folder_title, self.file_title = folder_title, file_title
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self._tooltip = tooltip
        self.edit.textChanged.connect(self._show_full_path)
        self.edit.setText(settings.get(settings_key))
        self._show_full_path(self.edit.text())
        self.edit.textChanged.connect(self.changed.emit)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip(folder_title)
        self.file_button = QPushButton("File…")
        self.file_button.setToolTip(file_title)
        self.folder_button.clicked.connect(self._browse_folder)
        self.file_button.clicked.connect(self._browse_file)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.folder_button)
        layout.addWidget(self.file_button)
        self.setAcceptDrops(True)

    def _show_full_path(self, text: str) -> None:
        """A narrow field cuts a long path: its tooltip shows the whole of it."""
        full = text.strip()
        self.edit.setToolTip(f"{full}\n\n{self._tooltip}" if full and self._tooltip else
                             full or self._tooltip)

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: str | Path) -> None:
        self.edit.setText(str(path))
        self.remember()

    def remember(self) -> None:
        """Store the current path as the one to show next time."""
        if self.path() is not None:
            self._settings.set(self._key, str(self.path()))

    def _start_dir(self) -> str:
        current = self.path()
        if current is None:
            return str(Path.home())
        return str(current if current.is_dir() else current.parent)

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.folder_title, self._start_dir())
        if folder:
            self.set_path(folder)

    def _browse_file(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, self.file_title, self._start_dir(),
                                              self._filter)
        if file:
            self.set_path(file)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        accept_url_drag(event)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        path = dropped_path(event)
        if path:
            self.set_path(path)
