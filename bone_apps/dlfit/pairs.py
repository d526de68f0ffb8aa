"""The scan/mask pairs table: add, drop, remove, and see each pair's check in its row."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QKeySequence,
    QShortcut,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.data.pairs import pairs_from_root
from bone_apps.core.errors import BoneAppsError
from bone_apps.dlfit.pair_check import PairCheck, check_queue
from bone_apps.ui.pickers import VOLUME_FILTER
from bone_apps.ui.settings import AppSettings
from bone_apps.ui.worker import JobWorker, dispose

SCAN, MASK, CHECK, VALIDATION = range(4)
HEADERS = ("Scan", "Mask", "Check", "Validation")
PROBLEM_BG, WARNING_BG = QColor(255, 214, 214), QColor(255, 239, 196)
_MASK_NAME = re.compile(r"mask|label|seg|truth|annot", re.IGNORECASE)
_KEY = Qt.ItemDataRole.UserRole


class _CellDelegate(QStyledItemDelegate):
    """Check texts wrap onto as many lines as they need (the row grows); paths stay on one
    line and are cut in the middle."""

    def initStyleOption(self, option, index) -> None:  # noqa: N802 - Qt override
        super().initStyleOption(option, index)
        if index.column() == CHECK:
            option.features |= QStyleOptionViewItem.ViewItemFeature.WrapText
        else:
            option.features &= ~QStyleOptionViewItem.ViewItemFeature.WrapText


class _DropTable(QTableWidget):
    """A table that takes dropped folders and files and hands them to its owner."""

    dropped = Signal(list, int, int)  # paths, row, column (-1 when dropped below the rows)

    def __init__(self) -> None:
        super().__init__(0, len(HEADERS))
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QTableWidget.DragDropMode.DropOnly)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        index = self.indexAt(event.position().toPoint())
        row, column = (index.row(), index.column()) if index.isValid() else (-1, -1)
        event.acceptProposedAction()
        self.dropped.emit(paths, row, column)


class PairsPanel(QWidget):
    """Rows of (scan, mask); each row is checked off the GUI thread as soon as it changes.

    `changed()` fires when rows are added, removed or edited. `class_count` (set by the
    window from the class names) makes labels beyond it a problem.
    """

    changed = Signal()
    error = Signal(str)

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.class_count: int | None = None
        self.checks: dict[int, PairCheck] = {}
        self._next_key = 0
        self._queue: deque = deque()
        self._worker: JobWorker | None = None
        self._filling = False

        self.table = _DropTable()
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for column, mode in ((SCAN, QHeaderView.ResizeMode.Stretch),
                             (MASK, QHeaderView.ResizeMode.Stretch),
                             (CHECK, QHeaderView.ResizeMode.Stretch),
                             (VALIDATION, QHeaderView.ResizeMode.ResizeToContents)):
            header.setSectionResizeMode(column, mode)
        # Word wrap lets rows grow to their check text; the delegate keeps paths on one line.
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setItemDelegate(_CellDelegate(self.table))
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setToolTip(
            "Each row is one scan and its mask (same size, labels 0 = background, 1 = bone, "
            "2 = pores, …). Drop folders or TIFF files here, or a dataset folder holding scans/ "
            "and masks/. Double-click a path to edit it; Delete removes the selected rows.")
        self.table.horizontalHeaderItem(VALIDATION).setToolTip(
            "Tick scans to keep for validation instead of a random split (Advanced mode).")
        self.table.dropped.connect(self.add_dropped)
        self.table.itemChanged.connect(self._on_item_changed)

        self.add_button = QPushButton("&Add pair")
        self.add_button.setToolTip("Choose a scan, then its mask: folders of TIFF slices or "
                                   "multi-page TIFF files.")
        menu = QMenu(self.add_button)
        menu.addAction("Folders of TIFF slices…", lambda: self._browse_pair(folders=True))
        menu.addAction("Multi-page TIFF files…", lambda: self._browse_pair(folders=False))
        self.add_button.setMenu(menu)
        self.root_button = QPushButton("Add &dataset root…")
        self.root_button.setToolTip("Choose a folder holding scans/<name> and masks/<name>: every "
                                    "scan is paired with the mask of the same name.")
        self.root_button.clicked.connect(self._browse_root)
        self.remove_button = QPushButton("&Remove selected")
        self.remove_button.setToolTip("Remove the selected rows (the files stay on disk).")
        self.remove_button.clicked.connect(self.remove_selected)
        delete = QShortcut(QKeySequence.StandardKey.Delete, self.table)
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)  # not while typing elsewhere
        delete.activated.connect(self.remove_selected)
        self.count_label = QLabel()
        buttons = QHBoxLayout()
        for widget in (self.add_button, self.root_button, self.remove_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        buttons.addWidget(self.count_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._update_count()

    # -- rows -----------------------------------------------------------------------------------
    def add_pair(self, scan: str | Path = "", mask: str | Path = "",
                 validation: bool = False) -> int:
        """Append a row and start its check; returns the row index."""
        row = self.table.rowCount()
        self._filling = True
        self.table.insertRow(row)
        key = self._next_key
        self._next_key += 1
        for column, text in ((SCAN, str(scan)), (MASK, str(mask))):
            item = QTableWidgetItem(text)
            item.setData(_KEY, key)
            item.setToolTip(text)
            self.table.setItem(row, column, item)
        check = QTableWidgetItem("")
        check.setFlags(check.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(row, CHECK, check)
        tick = QTableWidgetItem()
        tick.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled
                      | Qt.ItemFlag.ItemIsSelectable)
        tick.setCheckState(Qt.CheckState.Checked if validation else Qt.CheckState.Unchecked)
        self.table.setItem(row, VALIDATION, tick)
        self._filling = False
        self._recheck(row)
        self._update_count()
        self.changed.emit()
        return row

    def add_dataset_root(self, root: str | Path) -> int:
        """Add every scans/<id> + masks/<id> pair of a dataset folder; returns how many."""
        try:
            pairs = pairs_from_root(Path(root))
        except BoneAppsError as exc:
            self.error.emit(str(exc))
            return 0
        for pair in pairs:
            self.add_pair(pair.scan, pair.mask)
        self.settings.set("last_folder", str(Path(root)))
        return len(pairs)

    def add_dropped(self, paths: list[str], row: int = -1, column: int = -1) -> None:
        """Place dropped paths: dataset roots expand; one path on a cell fills that cell;
        otherwise scans and masks (told apart by name) are paired in order."""
        rest = []
        for text in paths:
            path = Path(text)
            if path.is_dir() and (path / "scans").is_dir() and (path / "masks").is_dir():
                self.add_dataset_root(path)
            else:
                rest.append(path)
        if not rest:
            return
        if len(rest) == 1 and row >= 0 and column in (SCAN, MASK):
            self.table.item(row, column).setText(str(rest[0]))
            return
        masks = [p for p in rest if _MASK_NAME.search(p.name) or _MASK_NAME.search(p.parent.name)]
        scans = [p for p in rest if p not in masks]
        if scans and len(scans) == len(masks):
            for scan, mask in zip(sorted(scans), sorted(masks)):
                self.add_pair(scan, mask)
            return
        for path in rest:
            last = self.table.rowCount() - 1
            if last >= 0 and self._text(last, SCAN) and not self._text(last, MASK):
                self.table.item(last, MASK).setText(str(path))
            elif last >= 0 and self._text(last, MASK) and not self._text(last, SCAN):
                self.table.item(last, SCAN).setText(str(path))
            elif path in masks:
                self.add_pair("", path)
            else:
                self.add_pair(path, "")

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True)
        for row in rows:
            self.checks.pop(self._key(row), None)
            self.table.removeRow(row)
        if rows:
            self._update_count()
            self.changed.emit()

    def clear(self) -> None:
        self.table.setRowCount(0)
        self.checks.clear()
        self._queue.clear()
        self._update_count()
        self.changed.emit()

    def set_validation_visible(self, visible: bool) -> None:
        self.table.setColumnHidden(VALIDATION, not visible)

    # -- what the window reads ------------------------------------------------------------------
    def rows(self) -> list[tuple[str, str, bool]]:
        """(scan, mask, ticked for validation) of every row, in order."""
        return [(self._text(r, SCAN), self._text(r, MASK),
                 self.table.item(r, VALIDATION).checkState() == Qt.CheckState.Checked)
                for r in range(self.table.rowCount())]

    def row_checks(self) -> list[PairCheck | None]:
        return [self.checks.get(self._key(r)) for r in range(self.table.rowCount())]

    def problems(self) -> list[str]:
        """One line per row with a problem found so far."""
        return [f"row {r + 1}: {c.problem}" for r, c in enumerate(self.row_checks())
                if c is not None and c.problem]

    def is_checking(self) -> bool:
        return self._worker is not None

    def set_class_count(self, count: int | None) -> None:
        """Named classes changed: check every row again against the new count."""
        if count != self.class_count:
            self.class_count = count
            for row in range(self.table.rowCount()):
                self._recheck(row)

    def stop_checks(self) -> None:
        """Stop checking (closing the window) and wait for the thread."""
        self._queue.clear()
        if self._worker is not None:
            self._worker.stop()
            self._worker.wait()

    # -- checks ---------------------------------------------------------------------------------
    def _recheck(self, row: int) -> None:
        key = self._key(row)
        self.checks.pop(key, None)
        self._show(row, None)
        self._queue.append((key, self._text(row, SCAN), self._text(row, MASK), self.class_count))
        self._start_checks()

    def _start_checks(self) -> None:
        if self._worker is not None or not self._queue:
            return
        self._worker = JobWorker(lambda stop: check_queue(self._queue, stop), yielded=self._on_check,
                                 errored=self.error, finished=self._on_checks_finished)
        self._worker.start()

    def _on_checks_finished(self) -> None:
        self._worker = dispose(self._worker)
        self._start_checks()  # rows added while the last item was being counted
        if self._worker is None:
            self.changed.emit()

    def _on_check(self, check: PairCheck) -> None:
        for row in range(self.table.rowCount()):
            if self._key(row) == check.key:
                if (self._text(row, SCAN), self._text(row, MASK)) == (check.scan, check.mask):
                    self.checks[check.key] = check
                    self._show(row, check)
                return

    def _show(self, row: int, check: PairCheck | None) -> None:
        self._filling = True
        item = self.table.item(row, CHECK)
        item.setText("checking…" if check is None else check.summary())
        item.setToolTip("" if check is None else f"{check.summary()}\n\n{check.details()}")
        color = None if check is None else (PROBLEM_BG if check.problem else
                                            WARNING_BG if check.warning else None)
        for column in range(self.table.columnCount()):
            cell = self.table.item(row, column)
            cell.setBackground(QBrush(color) if color else QBrush())
            cell.setForeground(QBrush(QColor("black")) if color else QBrush())
        self._filling = False

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() not in (SCAN, MASK):
            return
        self._recheck(item.row())
        self.changed.emit()

    # -- helpers --------------------------------------------------------------------------------
    def _text(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text().strip() if item is not None else ""

    def _key(self, row: int) -> int:
        return int(self.table.item(row, SCAN).data(_KEY))

    def _update_count(self) -> None:
        n = self.table.rowCount()
        self.count_label.setText(f"{n} pair{'s' if n != 1 else ''}" if n else
                                 "Drop scan and mask folders here")

    def _start_dir(self) -> str:
        return self.settings.get("last_folder", str(Path.home()))

    def _browse_pair(self, folders: bool) -> None:
        chosen = []
        for role in ("scan", "mask"):
            title = f"Choose the {role}" + (f" of {Path(chosen[0]).name}" if chosen else "")
            if folders:
                path = QFileDialog.getExistingDirectory(self, title, self._start_dir())
            else:
                path, _ = QFileDialog.getOpenFileName(self, title, self._start_dir(), VOLUME_FILTER)
            if not path:
                return
            chosen.append(path)
            self.settings.set("last_folder", str(Path(path).parent))
        self.add_pair(*chosen)

    def _browse_root(self) -> None:
        root = QFileDialog.getExistingDirectory(
            self, "Choose a dataset folder holding scans/ and masks/", self._start_dir())
        if root:
            self.add_dataset_root(root)
