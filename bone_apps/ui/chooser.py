"""The chooser of the macOS app (bone_apps.app): one window with DLFit, DLPred and IoU.

A macOS .app starts one program, and the bundle's programs share one folder of libraries; so
the .app starts this chooser, which opens the chosen app's window in the same process.
"""

from __future__ import annotations

import importlib
import sys

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QLabel, QMainWindow, QToolButton, QVBoxLayout, QWidget

from bone_apps import __version__
from bone_apps.ui.branding import PROGRAMS, app_icon

# program -> (module, window class, what it does)
APPS = {
    "dlfit": ("bone_apps.dlfit.window", "DLFitWindow", "Fit a segmentation model on scans and masks"),
    "dlpred": ("bone_apps.dlpred.window", "DLPredWindow", "Segment a scan with a fitted model"),
    "iou": ("bone_apps.iou.window", "IoUWindow", "Score a segmentation against a reference"),
}


class AppChooser(QMainWindow):
    """Three buttons, one per app; each opens (or raises) that app's window."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(f"bone_apps {__version__}")
        self.setWindowIcon(app_icon("bone_apps"))
        self.windows: dict[str, QMainWindow] = {}
        self.buttons: dict[str, QToolButton] = {}
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.addWidget(QLabel("Choose an app; the others stay a click away here:"))
        for program, (_, _, text) in APPS.items():
            button = QToolButton()
            button.setIcon(app_icon(program))
            button.setIconSize(QSize(48, 48))
            button.setText(f"{PROGRAMS[program]}\n{text}")
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setMinimumWidth(380)
            button.clicked.connect(lambda _=False, p=program: self.open(p))
            layout.addWidget(button)
            self.buttons[program] = button
        self.setCentralWidget(central)

    def open(self, program: str) -> QMainWindow:
        """Show the window of `program` (a new one unless it is still open)."""
        window = self.windows.get(program)
        if window is None or not window.isVisible():
            module, cls, _ = APPS[program]
            window = getattr(importlib.import_module(module), cls)()
            self.windows[program] = window
        window.show()
        window.raise_()
        window.activateWindow()
        return window


def main() -> int:
    """`bone_apps.app` on macOS: the chooser."""
    from bone_apps.ui.launcher import start_app

    return start_app("bone_apps", "bone_apps.ui.chooser", "AppChooser")


if __name__ == "__main__":
    sys.exit(main())
