"""IoU's Morphometry tab: the reference and the prediction measured side by side, label by label."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QTableWidgetItem, QWidget

from bone_apps.core.measure.compare import (
    MorphometryComparison,
    PairProgress,
    compare_stacks,
    difference_text,
    measure_heading,
    measure_text,
)
from bone_apps.core.measure.morphometry import MeasureOptions
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.measures import Job, MeasureView, number_item

COLUMNS = ("Label", "Measure", "Reference", "Prediction", "Difference")
# (reference, prediction, class names) as the window's fields hold them now.
Inputs = Callable[[], tuple[Path | None, Path | None, tuple[str, ...]]]


class MorphometryTab(MeasureView):
    """Each label's BV/TV, BS/BV, Tb.Th, Tb.Sp, Tb.N and Conn.D in both masks, and the difference."""

    def __init__(self, inputs: Inputs, parent: QWidget | None = None) -> None:
        super().__init__("IoU", COLUMNS, "&Measure both", text_columns=2, parent=parent)
        self._inputs = inputs
        self.measure_button.setToolTip(
            "Measure the bone morphometry of the reference and of the prediction (lengths in mm) "
            "and compare them: the difference is the prediction's, in percent of the reference.")
        self.table.setToolTip("Difference: (prediction − reference) / reference, in percent.")
        self.clear("Measure both masks to compare their morphometry.")

    def job(self) -> Job | None:
        reference, prediction, names = self._inputs()
        if reference is None or prediction is None:
            self.last_error = "Choose both a reference and a prediction mask first."
            show_error(self, self.title, self.last_error)
            return None
        options = MeasureOptions(class_names=names, voxel_size_um=self.voxel_size.voxel_size_um())
        return lambda stop: compare_stacks(reference, prediction, options, stop)

    def progress_text(self, record: PairProgress) -> str:
        return f"Measuring the {record.mask}: {record.stage}…"

    def fill(self, comparison: MorphometryComparison) -> None:
        rows = comparison.rows()
        self.table.setRowCount(len(rows))
        bold = QFont(self.table.font())
        bold.setBold(True)
        previous = None
        for row, r in enumerate(rows):
            label = QTableWidgetItem(f"{r.label}: {r.name}" if r.label != previous else "")
            label.setFont(bold)
            previous = r.label
            cells = (label, QTableWidgetItem(measure_heading(r.key)),
                     number_item(measure_text(r.reference)), number_item(measure_text(r.prediction)),
                     number_item(difference_text(r.difference_percent)))
            for column, item in enumerate(cells):
                self.table.setItem(row, column, item)
        z, y, x = comparison.prediction.voxel_size_um
        self.status.setText(f"{Path(comparison.reference.mask).name} (reference) and "
                            f"{Path(comparison.prediction.mask).name} (prediction); voxel size "
                            f"{z:g} x {y:g} x {x:g} µm.")

    def default_save_path(self, kind: str) -> str:
        _reference, prediction, _names = self._inputs()
        return "" if prediction is None else str(prediction.parent / f"morphometry.{kind}")
