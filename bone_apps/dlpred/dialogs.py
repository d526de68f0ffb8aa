"""Questions of the DLPred window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget


def ask_about_label_scan(parent: QWidget, scan: Path, reason: str, on_anyway: Callable[[], None],
                         on_other: Callable[[], None]) -> QMessageBox:
    """Ask (without blocking) whether to predict `scan`, which looks like a label mask for
    `reason`, anyway (`on_anyway`) or to choose another scan (`on_other`)."""
    box = QMessageBox(QMessageBox.Icon.Question, "DLPred",
                      f"{scan} looks like a label mask, not a scan: {reason}. Its labels would "
                      "be segmented as if they were intensities.", parent=parent)
    box.setObjectName("labelQuestion")
    box.setInformativeText("Predict it anyway, or choose another scan?")
    anyway = box.addButton("Predict anyway", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Choose another scan", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(box.buttons()[-1])
    box.setWindowModality(Qt.WindowModality.WindowModal)

    def answered() -> None:
        if box.clickedButton() is anyway:
            on_anyway()
        else:
            on_other()

    box.finished.connect(answered)
    box.open()
    return box
