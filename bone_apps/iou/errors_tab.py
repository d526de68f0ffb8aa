"""IoU's "Where it fails" tab: a reference slice with the prediction's errors for one class on top."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from bone_apps.core.io.volume import Volume
from bone_apps.core.score.error_map import ErrorCounts, count_errors, error_map
from bone_apps.ui.slice_view import SliceView

# Indexed by ErrorKind: agreement is never tinted; orange and blue stay apart for colour-blind eyes.
ERROR_COLOURS = ("#000000", "#ff7f0e", "#1f77b4")
OVERLAY_OPACITY = 75


class ErrorsTab(QWidget):
    """The scored reference, slice by slice, with false positives and false negatives of a class.

    `show_pair(reference, prediction, classes)` shows a scored pair (read one slice at a time);
    `clear(message)` empties the tab. `counts` holds the errors of the slice on show.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.reference: Volume | None = None
        self.prediction: Volume | None = None
        self.counts: ErrorCounts | None = None
        self.class_box = QComboBox()
        self.class_box.setToolTip("The class whose errors are shown.")
        self.class_box.currentIndexChanged.connect(self._on_class)
        self.counts_label = QLabel()
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.view = SliceView()
        self.view.opacity.setValue(OVERLAY_OPACITY)
        self.view.canvas.setToolTip(
            "The reference mask in grey (darker: lower labels) with the prediction's errors for "
            "the chosen class on top. Ctrl + mouse wheel or Ctrl +/- zooms.")
        self.view.z_changed.connect(lambda _: self._show_counts())
        class_label = QLabel("Class to &inspect:")
        class_label.setBuddy(self.class_box)
        row = QHBoxLayout()
        row.addWidget(class_label)
        row.addWidget(self.class_box)
        row.addWidget(self.counts_label, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(row)
        layout.addWidget(self.view, 1)
        self.clear("No scores yet: Compute, then click a slice in the plot to see it here.")

    def has_pair(self) -> bool:
        return self.reference is not None

    def show_pair(self, reference: Volume, prediction: Volume,
                  classes: Sequence[tuple[int, str]]) -> None:
        """Show `prediction`'s errors against `reference` (same shape); classes are (label, name)."""
        self.reference, self.prediction = reference, prediction
        self.class_box.blockSignals(True)
        self.class_box.clear()
        for label, name in classes:
            self.class_box.addItem(f"{label}: {name}", label)
        # Background errors mirror the other classes' ones: start on the first foreground class.
        self.class_box.setCurrentIndex(1 if len(classes) > 1 else 0)
        self.class_box.blockSignals(False)
        self.class_box.setEnabled(True)
        self.message.setText(f"Errors of prediction {prediction.path} against reference "
                             f"{reference.path}, on the reference in grey.")
        self.view.set_scan(reference)
        self.view.set_labels(self._errors)
        self._on_class()

    def clear(self, message: str) -> None:
        """Show nothing but `message`."""
        self.reference = self.prediction = self.counts = None
        self.class_box.clear()
        self.class_box.setEnabled(False)
        self.message.setText(message)
        self.counts_label.setText("")
        self.view.set_labels(None)
        self.view.set_scan(None)
        self.view.legend.setText("")

    def set_z(self, z: int) -> None:
        self.view.set_z(z)

    def label(self) -> int | None:
        """The class whose errors are on show."""
        return self.class_box.currentData()

    def _on_class(self) -> None:
        label, name = self.label(), self.class_box.currentText().partition(": ")[2]
        if label is None:
            return
        self.view.set_class_names(
            ["", f"false positive (predicted {name}, reference not)",
             f"false negative (reference {name}, predicted not)"], ERROR_COLOURS, numbered=False)
        self.view.refresh()
        self._show_counts()

    def _errors(self, z: int) -> np.ndarray | None:
        label = self.label()
        if self.reference is None or self.prediction is None or label is None:
            self.counts = None
            return None
        errors = error_map(self.reference.read_slice(z), self.prediction.read_slice(z), label)
        self.counts = count_errors(errors)
        return errors

    def _show_counts(self) -> None:
        if self.counts is None:
            self.counts_label.setText("")
            return
        self.counts_label.setText(f"Slice {self.view.z()}: {self.counts.false_positives:,} false "
                                  f"positive and {self.counts.false_negatives:,} false negative "
                                  "pixels.")
