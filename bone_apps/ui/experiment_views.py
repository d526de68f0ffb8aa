"""Tables of an experiment's results, shared by DLFit (filling in while it runs) and IoU (a
cv.json or bench.json opened): Table 6 of a cross-validation, a benchmark's rows with the
weighted ranking (mIoU weight control) and Table 7's sweep, and a picture view for the plot.
Every figure and cell text comes from core.evaluate; these widgets only lay them out."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.evaluate.bench import COST_FIGURES, bench_table
from bone_apps.core.evaluate.plot import cv_plot_png
from bone_apps.core.evaluate.rank import (
    METRIC_NAMES,
    PAPER_MIOU_WEIGHT,
    Ranking,
    rank,
    ranking_table,
    sweep,
    sweep_table,
)
from bone_apps.core.evaluate.summary import RULES, scan_table, table6_rows
from bone_apps.ui.background import BackgroundTask
from bone_apps.ui.widgets import scroll_column

NO_SCANS = "No scan scored yet."
NO_PLOT = "The plot needs matplotlib, which is not installed (pip install matplotlib)."


class FittedTable(QTableWidget):
    """A read-only table of text, no row numbers, columns fitted to their content. With
    `max_rows` it is exactly as tall as its rows (up to that many, then it scrolls); without,
    it takes the space it is given."""

    def __init__(self, max_rows: int | None = 12, parent: QWidget | None = None) -> None:
        super().__init__(0, 0, parent)
        self.max_rows = max_rows
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setWordWrap(True)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.fitted()

    def fitted(self) -> None:
        """Rows and columns sized to the text just set, and the height to the rows."""
        self.resizeColumnsToContents()
        self.resizeRowsToContents()
        if self.max_rows is None:
            return
        rows = [self.rowHeight(r) for r in range(min(self.rowCount(), self.max_rows))]
        # A fixed height, not a size hint: a hint that changes inside a hidden or nested layout
        # is not always taken up again, which left rows cut off.
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + 2 * self.frameWidth()
                            + (sum(rows) or self.fontMetrics().height() * 2)
                            + self.horizontalScrollBar().sizeHint().height())  # room for one


def text_table(max_rows: int | None = 12) -> FittedTable:
    """A read-only table of text, as tall as its rows (`max_rows` None: as tall as it is let)."""
    return FittedTable(max_rows)


def fill_table(table: QTableWidget, head: Sequence[str], rows: Sequence[Sequence[str]],
               text_columns: int = 1) -> None:
    """Show `rows` of text under `head`; the first `text_columns` columns left-aligned, the
    others (figures) right-aligned."""
    table.clear()
    table.setColumnCount(len(head))
    table.setHorizontalHeaderLabels(list(head))
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            item = QTableWidgetItem(text)
            if c >= text_columns:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)
    if isinstance(table, FittedTable):
        table.fitted()


def _bold(item: QTableWidgetItem) -> None:
    font = QFont(item.font())
    font.setBold(True)
    item.setFont(font)


class Table6View(FittedTable):
    """A cross-validation laid out like the paper's Table 6: one row per test fold, one column
    per seed (mIoU ± SD over the fold's test scans, mDice in brackets on the line below), the
    figure of each fold across seeds, and a bottom row across folds with the grand figure."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(max_rows=8, parent=parent)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.setToolTip("mIoU ± sample SD over each fold's test scans, mean Dice in brackets. Right "
                        "column: " + RULES["per_fold"] + "; bottom row: " + RULES["per_seed"]
                        + "; bottom right: " + RULES["grand"] + ". – : not scored yet.")

    def show_cv(self, data: dict) -> None:
        """Fill the table from cv.json's content (`CVUpdated.data` while it runs)."""
        head, rows = table6_rows(data, data["seeds"])
        self.clear()
        self.setColumnCount(len(head))
        self.setHorizontalHeaderLabels([h.replace(" (", "\n(").replace(" across", "\nacross")
                                        for h in head])
        self.setRowCount(len(rows))
        last_row, last_col = len(rows) - 1, len(head) - 1
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text.replace(" [", "\n[") if c else text)
                item.setTextAlignment((Qt.AlignmentFlag.AlignRight if c else Qt.AlignmentFlag.AlignLeft)
                                      | Qt.AlignmentFlag.AlignVCenter)
                if r == last_row or c == last_col:
                    _bold(item)
                self.setItem(r, c, item)
        self.fitted()

    def cell_text(self, row: int, column: int) -> str:
        """A cell as core.evaluate.summary.cell_text writes it (one line)."""
        item = self.item(row, column)
        return "" if item is None else item.text().replace("\n[", " [")


class CVView(QWidget):
    """A cross-validation: Table 6 and, below it, the per-scan mIoU by fold (core.evaluate.plot's
    figure, the cv.png of the data shown, drawn off the GUI thread) and the per-scan rows."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table6 = Table6View()
        self.plot = PictureView(NO_SCANS)
        self.plot.setToolTip("Each column is a test scan, grouped by fold; each point one seed's "
                             "model; dashed: the fold's mean. A scan far below its fold stands out.")
        self.scans_table = text_table(max_rows=None)
        self.scans_table.setToolTip("One row per fold × seed × test scan; Prediction is relative "
                                    "to the experiment folder.")
        self.below = QTabWidget()
        self.below.addTab(self.plot, "Per-scan mIoU by fold")
        self.below.addTab(self.scans_table, "Scans")
        layout = QVBoxLayout(self)  # Table 6 as tall as its rows, the rest below
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table6)
        layout.addWidget(self.below, 1)
        self._plot_token = self._drawn = 0  # data shown / data whose plot is on show

    def show_cv(self, data: dict) -> None:
        """Show cv.json's content (`CVUpdated.data` while it runs); the plot follows."""
        rows = data["scans"]
        self.table6.show_cv(data)
        head, cells = scan_table(rows, data.get("classes") or [])
        fill_table(self.scans_table, head, cells, text_columns=3)
        self._plot_token += 1
        if not rows:
            self._drawn = self._plot_token
            self.plot.set_png(None, NO_SCANS)
            return
        token, folds, seeds = self._plot_token, data["folds"], data["seeds"]
        if not self.plot.has_picture():
            self.plot.set_png(None, "Drawing the plot…")
        BackgroundTask(self, lambda: cv_plot_png(rows, folds, seeds),
                       lambda png: self._plot_ready(token, png),
                       lambda message: self._plot_ready(token, None, message))

    def plot_pending(self) -> bool:
        """Whether a plot of the data shown is still being drawn."""
        return self._drawn != self._plot_token

    def _plot_ready(self, token: int, png: bytes | None, failure: str = "") -> None:
        if token != self._plot_token:  # a plot of data shown before: a newer one is coming
            return
        self._drawn = token
        self.plot.set_png(png, f"The plot could not be drawn: {failure}" if failure else NO_PLOT)


class BenchView(QWidget):
    """A benchmark: its rows (mIoU, per-class IoU, cost figures), the weighted ranking with an
    mIoU weight to change, and the sensitivity sweep of Table 7."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[dict] = []
        self.ranking: Ranking | None = None
        self.rows_table = text_table()
        self.rows_table.setToolTip("Each configuration's mean scores over the test scans and its "
                                   "cost: " + ", ".join(COST_FIGURES) + "; - : not measured on "
                                   "this machine (GPU figures of a CPU fit, FLOPs not counted).")
        self.weight = QDoubleSpinBox()
        self.weight.setRange(0.0, 1.0)
        self.weight.setSingleStep(0.05)
        self.weight.setDecimals(2)
        self.weight.setValue(PAPER_MIOU_WEIGHT)
        self.weight.setToolTip("Weight of the normalized mIoU in the score (the paper: 0.85); the "
                               "rest is spread evenly over the efficiency metrics measured for "
                               "every model.")
        self.weight.valueChanged.connect(self._rank)
        self.weights_label = QLabel()
        self.weights_label.setWordWrap(True)
        self.ranking_table = text_table()
        self.ranking_table.setToolTip("Weighted score and each metric min-max normalized over the "
                                      "models (1 is best): higher is better for mIoU, batch and GPU "
                                      "utilization, lower for FLOPs, parameters, VRAM and time.")
        self.sweep_table = text_table()
        self.sweep_table.setToolTip("The ranking again at mIoU weights 1.00 to 0.70: the top three "
                                    "at each (the paper's Table 7).")
        weight_row = QHBoxLayout()
        weight_row.addWidget(QLabel("mIoU weig&ht:"))
        weight_row.itemAt(0).widget().setBuddy(self.weight)
        weight_row.addWidget(self.weight)
        weight_row.addWidget(self.weights_label, 1)
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 0, 0)
        for title, parts in (("Configurations", [self.rows_table]),
                             ("Weighted ranking", [weight_row, self.ranking_table]),
                             ("Sensitivity of the ranking (Table 7)", [self.sweep_table])):
            box = QGroupBox(title)
            inner = QVBoxLayout(box)
            for part in parts:
                inner.addLayout(part) if isinstance(part, QHBoxLayout) else inner.addWidget(part)
            column.addWidget(box)
        column.addStretch(1)
        scroll = scroll_column(content, horizontal=True)  # tables as tall as their rows
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        self.show_bench({"rows": []})

    def show_bench(self, data: dict) -> None:
        """Fill the tables from bench.json's content (`BenchUpdated.data` while it runs)."""
        self.rows = list(data.get("rows") or [])
        head, rows = bench_table(self.rows)
        fill_table(self.rows_table, head, rows)
        table7: list[dict] = []
        if self.rows:
            try:
                table7 = sweep(self.rows)
            except BoneAppsError as exc:
                self.weights_label.setText(str(exc))
        head, rows = sweep_table(table7)
        fill_table(self.sweep_table, head, rows, text_columns=len(head))
        self._rank()

    def _rank(self) -> None:
        """The ranking at the weight shown (core.evaluate.rank, as `bone rank --miou-weight`)."""
        self.ranking = None
        if not self.rows:
            fill_table(self.ranking_table, [], [])
            self.weights_label.setText("No configuration has finished yet.")
            return
        try:
            self.ranking = rank(self.rows, self.weight.value())
        except BoneAppsError as exc:
            fill_table(self.ranking_table, [], [])
            self.weights_label.setText(str(exc))
            return
        head, rows = ranking_table(self.ranking)
        fill_table(self.ranking_table, head, rows, text_columns=2)
        r = self.ranking
        lines = [f"Efficiency {1 - r.miou_weight:.2f} spread over the {len(r.measured)} metric(s) "
                 f"measured for every model: {r.efficiency_weight:.4f} each."]
        reasons: dict[str, list[str]] = {}
        for metric, why in r.left_out.items():
            reasons.setdefault(why, []).append(METRIC_NAMES[metric])
        lines += [f"Left out: {', '.join(names)} ({why})." for why, names in reasons.items()]
        self.weights_label.setText("\n".join(lines))


class PictureView(QLabel):
    """A picture scaled to the space it has, keeping its proportions (the cv.png plot)."""

    def __init__(self, empty_text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(empty_text, parent)
        self._pixmap = QPixmap()
        self.empty_text = empty_text
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setMinimumSize(200, 150)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)

    def set_png(self, png: bytes | None, text: str = "") -> bool:
        """Show PNG bytes (or `text` when there are none); False when they are not a PNG."""
        self._pixmap = QPixmap()
        if png is not None and not self._pixmap.loadFromData(png, "PNG"):
            self._pixmap = QPixmap()
        self._rescale(text or self.empty_text)
        return not self._pixmap.isNull()

    def has_picture(self) -> bool:
        return not self._pixmap.isNull()

    def _rescale(self, text: str = "") -> None:
        if self._pixmap.isNull():
            self.setPixmap(QPixmap())
            self.setText(text or self.empty_text)
            return
        self.setPixmap(self._pixmap.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                           Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if not self._pixmap.isNull():
            self._rescale()
