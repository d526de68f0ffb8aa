"""Small widget recipes the windows share."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QProgressBar, QScrollArea, QWidget


def scroll_column(content: QWidget, horizontal: bool = False) -> QScrollArea:
    """A frameless scroll area around `content` that grows with it; it scrolls sideways only
    when `horizontal`."""
    scroll = QScrollArea()
    scroll.setWidget(content)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    if not horizontal:
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return scroll


def idle_progress(bar: QProgressBar, text: str) -> None:
    """Show an empty progress bar that says `text` (no run yet, no result, ...)."""
    bar.setFormat(text)
    bar.setRange(0, 1)
    bar.setValue(0)
