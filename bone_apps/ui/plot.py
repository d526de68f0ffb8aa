"""A light line plot drawn with QPainter: several named series over a shared x axis.

Qt Charts is not part of PySide6-Essentials; a plot of a few hundred points needs no more.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
CLICK_TOLERANCE_PX = 12  # how far from a point's x a click still picks it


class LinePlot(QWidget):
    """Series of (x, y) points with axes, ticks, a title and a legend.

    y values of None leave a gap. `y_range` fixes the y axis (e.g. (0, 1) for IoU).
    `clicked(x)` fires with the x of the point nearest a left click, when one is close in x.
    """

    clicked = Signal(float)

    def __init__(self, title: str = "", x_label: str = "", y_label: str = "",
                 y_range: tuple[float, float] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title, self.x_label, self.y_label, self.y_range = title, x_label, y_label, y_range
        self._series: dict[str, list[tuple[float, float | None]]] = {}
        self.empty_text = "No data yet."
        self.setMinimumSize(240, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self) -> None:
        self._series.clear()
        self.update()

    def set_series(self, name: str, points: list[tuple[float, float | None]]) -> None:
        self._series[name] = list(points)
        self.update()

    def add_point(self, name: str, x: float, y: float | None) -> None:
        self._series.setdefault(name, []).append((x, y))
        self.update()

    def series(self, name: str) -> list[tuple[float, float | None]]:
        return list(self._series.get(name, []))

    def _bounds(self) -> tuple[float, float, float, float]:
        xs = [x for pts in self._series.values() for x, _ in pts]
        ys = [y for pts in self._series.values() for _, y in pts if y is not None]
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if x1 == x0:
            x1 = x0 + 1
        if self.y_range is not None:
            y0, y1 = self.y_range
        elif not ys:  # nothing drawn yet: a plain 0..1 axis, no invented margins
            return x0, x1, 0.0, 1.0
        else:
            y0, y1 = min(ys), max(ys)
            pad = (y1 - y0) * 0.08 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        return x0, x1, y0, y1

    def axes(self) -> tuple[float, float, float, float]:
        """The drawn ranges (x0, x1, y0, y1)."""
        return self._bounds()

    def x_ticks(self) -> list[float]:
        """Values labelled on the x axis (whole numbers when every x is one, or none is drawn)."""
        x0, x1, _, _ = self._bounds()
        step = _nice_step(x1 - x0)
        xs = [x for pts in self._series.values() for x, _ in pts]
        if all(float(x).is_integer() for x in xs):  # also when empty: no fractional epochs
            step = max(1.0, step)  # epochs and slices: whole-number ticks only
        ticks, x = [], math.ceil(x0 / step) * step
        while x <= x1 + 1e-9:
            ticks.append(x)
            x += step
        return ticks

    def _plot_rect(self) -> QRectF:
        """The area inside the axes, in widget coordinates."""
        metrics = self.fontMetrics()
        line = metrics.height()
        plot = QRectF(metrics.horizontalAdvance("0.000") + line * 1.6, line * 1.6, 0, 0)
        plot.setRight(self.width() - line)
        plot.setBottom(self.height() - line * 2.6)
        return plot

    def to_screen(self, x: float, y: float) -> QPointF:
        """Where the data point (x, y) is drawn, in widget coordinates."""
        plot, (x0, x1, y0, y1) = self._plot_rect(), self._bounds()
        return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                       plot.bottom() - (y - y0) / (y1 - y0) * plot.height())

    def nearest_x(self, screen_x: float) -> float | None:
        """The x of the point drawn nearest `screen_x`, or None when none is within reach."""
        xs = {x for pts in self._series.values() for x, y in pts if y is not None}
        if not xs:
            return None
        nearest = min(xs, key=lambda x: abs(self.to_screen(x, 0).x() - screen_x))
        return nearest if abs(self.to_screen(nearest, 0).x() - screen_x) <= CLICK_TOLERANCE_PX \
            else None

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        x = self.nearest_x(event.position().x()) if event.button() == Qt.MouseButton.LeftButton \
            else None
        if x is None:
            super().mousePressEvent(event)
            return
        event.accept()
        self.clicked.emit(x)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.base())
        text = palette.text().color()
        metrics = painter.fontMetrics()
        line = metrics.height()
        plot = self._plot_rect()
        if plot.width() < 20 or plot.height() < 20:
            return
        x0, x1, y0, y1 = self._bounds()
        to_screen = self.to_screen

        grid = QColor(text)
        grid.setAlpha(40)
        painter.setPen(QPen(text))
        painter.drawText(QRectF(plot.left(), 0, plot.width(), line * 1.4),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, self.title)
        for i in range(5):
            y = y0 + (y1 - y0) * i / 4
            p = to_screen(x0, y)
            painter.setPen(QPen(grid))
            painter.drawLine(QPointF(plot.left(), p.y()), QPointF(plot.right(), p.y()))
            painter.setPen(QPen(text))
            painter.drawText(QRectF(0, p.y() - line / 2, plot.left() - 4, line),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             f"{y:.3g}")
        xs = [x for pts in self._series.values() for x, _ in pts]
        for x in self.x_ticks():
            p = to_screen(x, y0)
            painter.drawText(QRectF(p.x() - 30, plot.bottom() + 2, 60, line),
                             Qt.AlignmentFlag.AlignHCenter, f"{x:g}")
        painter.drawRect(plot)
        if not xs:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, self.empty_text)
        painter.drawText(QRectF(plot.left(), self.height() - line * 1.3, plot.width(), line),
                         Qt.AlignmentFlag.AlignHCenter, self.x_label)
        painter.save()
        painter.translate(line * 0.2, plot.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-plot.height() / 2, 0, plot.height(), line),
                         Qt.AlignmentFlag.AlignHCenter, self.y_label)
        painter.restore()
        legend_x = plot.right()  # legend entries laid out right to left above the plot
        for index, (name, points) in enumerate(self._series.items()):
            color = QColor(PALETTE[index % len(PALETTE)])
            painter.setPen(QPen(color, 2))
            path, pen_down = QPainterPath(), False
            for x, y in points:
                if y is None or not math.isfinite(y):
                    pen_down = False
                    continue
                p = to_screen(x, y)
                path.lineTo(p) if pen_down else path.moveTo(p)
                pen_down = True
                if len(points) < 40:
                    painter.drawEllipse(p, 2, 2)
            painter.drawPath(path)
            width = metrics.horizontalAdvance(name) + 4
            legend_x -= width
            painter.setPen(QPen(text))
            painter.drawText(QRectF(legend_x, plot.top() - line * 1.25, width, line),
                             Qt.AlignmentFlag.AlignLeft, name)
            painter.setPen(QPen(color, 2))
            y_mid = plot.top() - line * 0.75
            painter.drawLine(QPointF(legend_x - 20, y_mid), QPointF(legend_x - 4, y_mid))
            legend_x -= 32


def _nice_step(span: float) -> float:
    raw = span / 6
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power
