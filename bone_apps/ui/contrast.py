"""Contrast controls for a grey image: the grey levels shown as black and white, and "Auto"."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QWidget

# Robust black and white points: a few hot or dead pixels do not wash the picture out.
AUTO_PERCENTILES = (0.5, 99.5)
_LIMIT = 1e12


def percentile_range(image: np.ndarray, percentiles: tuple[float, float] = AUTO_PERCENTILES,
                     max_samples: int = 512) -> tuple[float, float]:
    """Grey levels to show as black and white for `image`, from its percentiles.

    Args:
        image: (Y, X) grey values; large images are subsampled to about `max_samples` per side.
        percentiles: the low and high percentiles (0-100).

    Returns:
        (low, high) with high > low.
    """
    step = max(1, max(image.shape) // max_samples)
    values = np.asarray(image[::step, ::step], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    return lo, hi if hi > lo else lo + 1.0


class ContrastBar(QWidget):
    """Min and max grey level plus an Auto button.

    `changed(lo, hi)` fires when the user edits either value; `auto_requested()` when Auto is
    pressed (the owner knows which image is on show and answers with `set_range`).
    """

    changed = Signal(float, float)
    auto_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.low, self.high = QDoubleSpinBox(), QDoubleSpinBox()
        for spin, tip in ((self.low, "The grey level shown as black: darker voxels are clipped."),
                          (self.high, "The grey level shown as white: brighter voxels are clipped.")):
            spin.setRange(-_LIMIT, _LIMIT)
            spin.setKeyboardTracking(False)  # redraw once the number is typed, not per digit
            spin.setToolTip(tip)
            spin.valueChanged.connect(self._on_edit)
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip("Set black and white from the shown slice: its 0.5th and "
                                    "99.5th percentiles of grey.")
        # No mnemonics here: the windows holding a slice view have used up the obvious letters.
        self.auto_button.clicked.connect(self.auto_requested.emit)
        # The owner's row label leads to `low` by Alt+letter; these two only name the fields.
        low_label, high_label = QLabel("black"), QLabel("white")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (low_label, self.low, high_label, self.high, self.auto_button):
            layout.addWidget(widget)
        layout.addStretch(1)
        self._setting = False

    def values(self) -> tuple[float, float]:
        """(black, white) grey levels; white is kept above black."""
        lo, hi = self.low.value(), self.high.value()
        return (lo, hi) if hi > lo else (lo, lo + 10.0 ** -self.low.decimals())

    def set_range(self, lo: float, hi: float, integer: bool = True) -> None:
        """Show (lo, hi) without firing `changed`; `integer` scans get whole-number steps."""
        self._setting = True
        for spin in (self.low, self.high):
            spin.setDecimals(0 if integer else 4)
            spin.setSingleStep(1.0 if integer else max((hi - lo) / 100, 1e-4))
        self.low.setValue(lo)
        self.high.setValue(hi)
        self._setting = False

    def _on_edit(self) -> None:
        if not self._setting:
            self.changed.emit(*self.values())
