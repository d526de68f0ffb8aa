"""DLPred's inputs: the scan, the weights file (with its metadata on show) and the output.

Choosing a scan opens it (headers only) and choosing a weights file reads its metadata, both
off the GUI thread and after typing pauses; problems show in red beside the field at once, and
again as a dialog if Predict is pressed anyway.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QWidget

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.volume import Volume
from bone_apps.dlpred import bridge
from bone_apps.ui.background import BackgroundTask, join_worker
from bone_apps.ui.pickers import MODEL_FILTER, WEIGHTS_TITLE, PathPicker
from bone_apps.ui.settings import AppSettings

DEBOUNCE_MS = 400  # wait for typing to pause before opening a scan or a weights file
PROBLEM_STYLE = "color: #b00020;"


class InputsBox(QGroupBox):
    """Scan, weights and output pickers.

    Signals: `scan_opened(Volume | None)` once a chosen scan is open (None: no usable scan),
    `meta_loaded(dict | None)` once a chosen weights file is read (None: no usable file).
    """

    scan_opened = Signal(object)
    meta_loaded = Signal(object)

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__("Scan, model and output", parent)
        self.volume: Volume | None = None
        # Why the open scan looks like a label mask (None: it looks like a scan).
        self.label_reason: str | None = None
        self.meta: dict | None = None
        self._tasks: set[BackgroundTask] = set()
        self._auto_output = ""
        self.scan = PathPicker("Scan: TIFF folder or file, OME-Zarr, NIfTI or HDF5 (file.h5:/dataset)",
                               settings, "scan",
                               "The micro-CT scan to segment: a folder of TIFF slices, one "
                               "multi-page TIFF, an OME-Zarr image (folder), a NIfTI file or an HDF5 "
                               "dataset written as file.h5:/path (8-bit, 16-bit or 32-bit float). "
                               "You can also drop a folder or file here.")
        self.scan_info = QLabel()
        self.scan_info.setWordWrap(True)
        self.weights = PathPicker("Weights: a .pth file written by DLFit (or an exported .onnx)", settings,
                                  "weights",
                                  "The fitted model, a .pth file written by DLFit or `bone fit`. It "
                                  "carries everything about the model (2D, 2.5D or 3D, architecture, "
                                  "classes, normalization), so nothing else has to be matched by "
                                  "hand.", file_filter=MODEL_FILTER, file_title=WEIGHTS_TITLE)
        self.weights.folder_button.hide()
        self.weights.file_button.setText("Choose…")
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.model_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_info.setToolTip("What the weights file says about its model and its fitting.")
        self.output = PathPicker("Output: folder for the label slices, or a .tif file", settings,
                                 "output", "Where the label stack is written: a folder of TIFF "
                                 "slices with the scan's slice names, or a .tif file for one "
                                 "multi-page stack (the same form as the scan). By default named "
                                 "<scan>_labels, next to the scan, or in the dataset's predictions "
                                 "folder when the scan sits in a dataset's scans folder (so it is "
                                 "never taken for a scan or a mask). It appears under this name "
                                 "only once complete.")
        self.output.edit.setText("")  # each scan suggests its own; see _suggest_output
        self.output.folder_button.setText("In folder…")
        self.output.folder_button.setToolTip("Choose the folder in which to create the output.")
        self.output.file_button.setText("As file…")
        self.output.file_button.setToolTip("Write the labels as one multi-page TIFF file.")
        for button in (self.output.folder_button, self.output.file_button):
            button.clicked.disconnect()  # an output is a new name, not an existing path
        self.output.folder_button.clicked.connect(self._choose_output_folder)
        self.output.file_button.clicked.connect(self._choose_output_file)
        self.overwrite = QCheckBox("&Replace an existing output")
        self.overwrite.setToolTip("Allow replacing an output of the same name (only once the new "
                                  "one is complete). Off by default, so no result is lost by "
                                  "accident.")
        form = QFormLayout(self)
        form.addRow("&Scan:", self.scan)
        form.addRow("", self.scan_info)
        form.addRow("&Weights:", self.weights)
        form.addRow(QLabel("Model:"), self.model_info)  # no buddy: the text is read, not edited
        form.addRow("&Output:", self.output)
        form.addRow("", self.overwrite)

        self._scan_timer = self._debounce(self._load_scan)
        self._weights_timer = self._debounce(self._load_weights)
        self.scan.changed.connect(lambda _: self._scan_timer.start())
        self.weights.changed.connect(lambda _: self._weights_timer.start())

    def start(self) -> None:
        """Open what was remembered from the last session."""
        self._load_scan()
        self._load_weights()

    def busy(self) -> bool:
        """Whether a scan or weights file is still waiting to be opened or read."""
        return bool(self._tasks) or self._scan_timer.isActive() or self._weights_timer.isActive()

    def flush(self) -> None:
        """Start at once what typing had scheduled (before Predict reads the fields)."""
        for timer, load in ((self._scan_timer, self._load_scan),
                            (self._weights_timer, self._load_weights)):
            if timer.isActive():
                timer.stop()
                load()

    def wait(self) -> None:
        """Let running background reads end (before the window closes)."""
        for task in list(self._tasks):
            join_worker(task.worker)

    def remember(self) -> None:
        for picker in (self.scan, self.weights, self.output):
            picker.remember()

    def label_reason_of(self, scan: Path) -> str | None:
        """Why `scan` looks like a label mask (None: it looks like a scan, or cannot be read,
        which the engine reports with its own message); judged now when it is not yet open."""
        if self.volume is not None and Path(self.volume.path) == scan:
            return self.label_reason
        try:
            return bridge.open_scan(scan)[1]
        except BoneAppsError:
            return None

    # -- loading --------------------------------------------------------------------------------
    def _debounce(self, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(DEBOUNCE_MS)
        timer.timeout.connect(slot)
        return timer

    def _background(self, fn, done, failed) -> None:
        task = BackgroundTask(self, fn, done, failed)
        self._tasks.add(task)
        task.ended.connect(lambda: self._tasks.discard(task))

    def _load_scan(self) -> None:
        path = self.scan.path()
        if path is None:
            self.scan_info.setText("")
            self.volume, self.label_reason = None, None
            self.scan_opened.emit(None)
            return
        self._suggest_output(path)

        def done(opened: tuple[Volume, str | None]) -> None:
            if self.scan.path() == path:  # not if another scan was chosen meanwhile
                self.volume, self.label_reason = opened
                volume = self.volume
                z, y, x = volume.shape
                size = f", {volume.voxel_size}" if volume.voxel_size else ""
                text = f"{z} slices of {x} x {y} px, {volume.dtype}{size}"
                if self.label_reason:
                    text += f"; this looks like a label mask, not a scan: {self.label_reason}."
                self._show(self.scan_info, text, problem=bool(self.label_reason))
                self.scan_opened.emit(volume)

        def failed(message: str) -> None:
            if self.scan.path() == path:
                self.volume, self.label_reason = None, None
                self._show(self.scan_info, message, problem=True)
                self.scan_opened.emit(None)

        self.scan_info.setText("Opening…")
        self._background(lambda: bridge.open_scan(path), done, failed)

    def _load_weights(self) -> None:
        path = self.weights.path()
        if path is None:
            self.meta = None
            self._show(self.model_info, "Choose a weights file to see its model.")
            self.meta_loaded.emit(None)
            return

        def done(meta: dict) -> None:
            if self.weights.path() == path:
                self.meta = meta
                self._show(self.model_info, bridge.describe_meta(meta))
                self.meta_loaded.emit(meta)

        def failed(message: str) -> None:
            if self.weights.path() == path:
                self.meta = None
                self._show(self.model_info, message, problem=True)
                self.meta_loaded.emit(None)

        self.model_info.setText("Reading…")
        if path.suffix.lower() == ".pth":
            # torch is imported here, on the GUI thread: a first import of torch in a worker
            # thread cannot finish while the app exits, and Qt aborts on the still-running thread.
            import torch  # noqa: F401
        self._background(lambda: bridge.read_meta(path), done, failed)

    @staticmethod
    def _show(label: QLabel, text: str, problem: bool = False) -> None:
        label.setText(bridge.plain_message(text) if problem else text)
        label.setStyleSheet(PROBLEM_STYLE if problem else "")

    # -- output ---------------------------------------------------------------------------------
    def _suggest_output(self, scan: Path) -> None:
        """Follow the scan with the default output, unless the user typed or chose one."""
        current = self.output.edit.text().strip()
        if current in ("", self._auto_output):
            self._auto_output = str(bridge.default_output(scan))
            self.output.edit.setText(self._auto_output)

    def _choose_output_folder(self) -> None:
        scan = self.scan.path()
        start = str(scan.parent) if scan else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Create the output in this folder", start)
        if folder:
            name = bridge.default_output(scan).name if scan else "labels"
            self.output.set_path(Path(folder) / name)

    def _choose_output_file(self) -> None:
        scan = self.scan.path()
        start = str(bridge.default_output(scan)) if scan else ""
        file, _ = QFileDialog.getSaveFileName(
            self, "Write the labels as one file (.tif, .nii.gz, .h5; the scan's kind by default)", start,
            "Label stacks (*.tif *.tiff *.nii *.nii.gz *.h5);;All files (*)")
        if file:
            self.output.set_path(file)
