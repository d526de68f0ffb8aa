"""DLPred's Morphometry tab: measure the labels a prediction just wrote, in physical units."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtWidgets import QTableWidgetItem, QWidget

from bone_apps.core.measure.compare import KEY_MEASURES, measure_heading, measure_text
from bone_apps.core.measure.morphometry import MeasureOptions, MeasureProgress, measure_stacks
from bone_apps.core.measure.report import MorphometryResult
from bone_apps.core.predict.output_plan import scan_id
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.measures import Job, MeasureView, number_item

COLUMNS = ("Label", *(measure_heading(key) for key in KEY_MEASURES))


class LabelsMeasureView(MeasureView):
    """BV/TV, BS/BV, Tb.Th, Tb.Sp, Tb.N and Conn.D of each label of the output, one row per label."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("DLPred", COLUMNS, None, parent=parent)
        self.mask: Path | None = None
        self.class_names: tuple[str, ...] = ()
        self.table.setToolTip("Bone morphometry of each predicted label (Bouxsein et al. 2010): "
                              "lengths in mm. Every other measure is in the saved JSON.")
        self.set_mask(None)

    def set_mask(self, mask: Path | None, class_names: Sequence[str] = ()) -> None:
        """The label stack to measure next (None: none yet); clears what is shown."""
        self.mask, self.class_names = mask, tuple(class_names)
        self.clear("Measure the labels after a prediction." if mask is None
                   else f"Measure the labels in {mask.name}.")

    def job(self) -> Job | None:
        if self.mask is None:
            self.last_error = "Predict a scan first: the labels it writes are what is measured."
            show_error(self, self.title, self.last_error)
            return None
        mask = self.mask
        options = MeasureOptions(class_names=self.class_names, voxel_size_um=self.voxel_size.voxel_size_um())
        return lambda stop: measure_stacks(mask, options, stop=stop)

    def progress_text(self, record: MeasureProgress) -> str:
        which = "" if record.label is None else f" label {record.label}"
        return f"Measuring{which}: {record.stage}…"

    def fill(self, result: MorphometryResult) -> None:
        self.table.setRowCount(len(result.labels))
        for row, entry in enumerate(result.labels):
            values = entry.values()
            self.table.setItem(row, 0, QTableWidgetItem(f"{entry.label}: {entry.name}"))
            for column, key in enumerate(KEY_MEASURES, start=1):
                self.table.setItem(row, column, number_item(measure_text(values.get(key))))
        z, y, x = result.voxel_size_um
        where = "from the file" if result.voxel_size_from == "file" else "entered"
        self.status.setText(f"{len(result.labels)} label(s) of {Path(result.mask).name}; voxel size "
                            f"{z:g} x {y:g} x {x:g} µm ({where}).")

    def default_save_path(self, kind: str) -> str:
        if self.mask is None:
            return ""
        return str(self.mask.parent / f"{scan_id(self.mask)}_measures.{kind}")
