"""The pair on show: the scan of the selected table row with its mask overlaid, slice by slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.dlfit.pairs import PairsPanel
from bone_apps.ui.slice_view import SliceView


class PairView(QWidget):
    """Follows the selection of a `PairsPanel`: shows the selected row's scan with its mask.

    Both stacks are opened lazily; only the slice on screen is read, so a large pair shows at
    once. `shown(row)` fires when a row's pair is put on show.
    """

    shown = Signal(int)

    def __init__(self, pairs: PairsPanel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pairs = pairs
        self.scan: Volume | None = None
        self.mask: Volume | None = None
        self.title = QLabel("Select a row of the pairs table to see its scan with the mask on top.")
        self.title.setWordWrap(True)
        self.view = SliceView()
        self.view.canvas.setToolTip("The scan with its mask on top. Ctrl + mouse wheel or "
                                    "Ctrl +/- zooms; drag the scroll bars to move around.")
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.view, 1)
        pairs.table.itemSelectionChanged.connect(self._on_selection)

    def show_row(self, row: int) -> None:
        """Show the pair of table row `row` (a row that cannot be read says why instead)."""
        rows = self.pairs.rows()
        if not 0 <= row < len(rows):
            return
        scan, mask = rows[row][:2]
        # The view lets go of the old files before they are closed: a slice of a closed
        # memory map must never be read or painted.
        self.view.set_labels(None)
        self.view.set_scan(None)
        self._close()
        try:
            self.scan = open_volume(Path(scan).expanduser()) if scan else None
            self.mask = open_volume(Path(mask).expanduser(), role="mask") if mask else None
        except BoneAppsError as exc:
            self._close()
            self.view.set_scan(None)
            self.title.setText(f"Row {row + 1} cannot be shown: {exc}")
            return
        if self.scan is not None and self.mask is not None and self.mask.shape != self.scan.shape:
            self.mask = None  # the table's check already says the sizes differ
        self.view.set_labels(self._labels if self.mask is not None else None)
        self.view.set_scan(self.scan)
        names = [Path(p).name for p in (scan, mask) if p]
        self.title.setText(f"Row {row + 1}: " + " with ".join(names) + (
            "" if self.mask is not None else " (no mask of the scan's size to overlay)"))
        self.shown.emit(row)

    def close_pair(self) -> None:
        """Show nothing and let go of the files (the window closes)."""
        self.view.set_scan(None)
        self._close()

    def _labels(self, z: int) -> np.ndarray | None:
        try:
            return self.mask.read_slice(z) if self.mask is not None else None
        except BoneAppsError:
            return None  # moved or deleted since: the scan alone

    def _on_selection(self) -> None:
        rows = sorted({index.row() for index in self.pairs.table.selectedIndexes()})
        if len(rows) == 1:
            self.show_row(rows[0])

    def _close(self) -> None:
        for volume in (self.scan, self.mask):
            if volume is not None:
                volume.close()
        self.scan = self.mask = None
