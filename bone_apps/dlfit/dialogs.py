"""Small dialogs of the DLFit window: what to do with an earlier run, configuration files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

CONFIG_FILTER = "Fitting configuration (*.json);;All files (*)"


def ask_about_earlier_run(parent: QWidget, out: str, resumable: bool,
                          on_replace: Callable[[], None],
                          on_resume: Callable[[], None]) -> QMessageBox:
    """Ask (without blocking) whether to replace, resume (when it can be) or keep a run."""
    box = QMessageBox(QMessageBox.Icon.Question, "DLFit",
                      f"{out} holds an earlier run. Replace it with a new run?", parent=parent)
    box.setObjectName("earlierRunQuestion")
    replace = box.addButton("Replace it", QMessageBox.ButtonRole.DestructiveRole)
    replace.setToolTip("Delete the earlier run's model, checkpoint and logs, then start anew.")
    resume = box.addButton("Resume it", QMessageBox.ButtonRole.AcceptRole) if resumable else None
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)

    def answered() -> None:
        if box.clickedButton() is replace:
            on_replace()
        elif resume is not None and box.clickedButton() is resume:
            on_resume()

    box.finished.connect(answered)
    box.open()
    return box


def choose_config_file(parent: QWidget, save: bool, start: Path) -> Path | None:
    """A JSON configuration file to save to or load from; None when cancelled."""
    if save:
        file, _ = QFileDialog.getSaveFileName(parent, "Save the configuration",
                                              str(start / "fit-config.json"), CONFIG_FILTER)
    else:
        file, _ = QFileDialog.getOpenFileName(parent, "Load a configuration", str(start),
                                              CONFIG_FILTER)
    return Path(file) if file else None
