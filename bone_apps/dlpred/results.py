"""After a prediction: class counts, confidence statistics and benchmarks from the engine's report."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

Row = tuple[str, str]  # (quantity, value); a value of "" marks a section heading


class Histogram(QWidget):
    """Bars of fractions over equal bins of [lo, hi] (the winning-probability histogram)."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.fractions: list[float] = []
        self.edges: tuple[float, float] = (0.0, 1.0)
        self.marker: float | None = None  # e.g. the confidence threshold
        self.setMinimumSize(200, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_bins(self, fractions: Sequence[float], lo: float = 0.0, hi: float = 1.0,
                 marker: float | None = None) -> None:
        total = float(sum(fractions)) or 1.0
        self.fractions = [f / total for f in fractions]
        self.edges, self.marker = (lo, hi), marker
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.base())
        text = palette.text().color()
        line = painter.fontMetrics().height()
        plot = QRectF(line * 0.5, line * 1.4, self.width() - line, self.height() - line * 2.8)
        painter.setPen(text)
        painter.drawText(QRectF(plot.left(), 0, plot.width(), line * 1.3),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self.title)
        if not self.fractions or plot.height() < 10:
            return
        lo, hi = self.edges
        width = plot.width() / len(self.fractions)
        top = max(self.fractions) or 1.0
        bar = QColor(palette.highlight().color())
        for i, fraction in enumerate(self.fractions):
            h = plot.height() * fraction / top
            painter.fillRect(QRectF(plot.left() + i * width + 1, plot.bottom() - h, width - 2, h), bar)
        painter.setPen(text)
        painter.drawLine(plot.bottomLeft(), plot.bottomRight())
        for value in (lo, (lo + hi) / 2, hi):
            x = plot.left() + (value - lo) / (hi - lo) * plot.width()
            painter.drawText(QRectF(x - 30, plot.bottom() + 2, 60, line),
                             Qt.AlignmentFlag.AlignHCenter, f"{value:g}")
        if self.marker is not None and lo <= self.marker <= hi:
            x = plot.left() + (self.marker - lo) / (hi - lo) * plot.width()
            painter.setPen(QPen(QColor("#d62728"), 2, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))


class ResultsView(QWidget):
    """A two-column table (quantity, value) with section headings, and a histogram under it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(("Quantity", "Value"))
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        rows = self.table.verticalHeader()
        rows.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        rows.setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setToolTip("What the run produced and what it cost, as the paper reports it "
                              "(Table 5). Select cells and press Ctrl+C to copy them.")
        self.histogram = Histogram("Voxels by confidence (dashed: threshold)")
        self.histogram.setToolTip(
            "Fraction of voxels by the probability of their winning class. Most voxels near 1 "
            "means a confident model; many near the red line (the confidence threshold) means "
            "uncertain regions worth checking in the preview.")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 3)
        layout.addWidget(self.histogram, 2)
        self.clear()

    def clear(self) -> None:
        self.set_rows([("No results yet", "class counts, confidence and benchmarks follow a run")])
        self.histogram.set_bins([])

    def set_rows(self, rows: Sequence[Row]) -> None:
        self.table.clearSpans()
        self.table.setRowCount(len(rows))
        bold = QFont(self.table.font())
        bold.setBold(True)
        for r, (name, value) in enumerate(rows):
            first = QTableWidgetItem(name)
            self.table.setItem(r, 0, first)
            if value == "":
                first.setFont(bold)
                self.table.setSpan(r, 0, 1, 2)
                continue
            self.table.setItem(r, 1, QTableWidgetItem(value))

    def value(self, name: str) -> str | None:
        """The value shown for `name` (for tests and copy)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == name and self.table.item(r, 1) is not None:
                return self.table.item(r, 1).text()
        return None
