"""Message dialogs with one plain sentence, never a traceback."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget


def show_error(parent: QWidget | None, title: str, message: str) -> QMessageBox:
    """Show `message` in a modal error dialog (non-blocking, so tests and workers go on)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok,
                      parent)
    box.setObjectName("errorDialog")
    box.setWindowModality(box.windowModality().WindowModal)
    box.open()
    return box
