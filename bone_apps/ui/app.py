"""Start a desktop app: one QApplication, a window, the event loop."""

from __future__ import annotations

import sys
from collections.abc import Callable

from PySide6.QtWidgets import QApplication, QWidget


def run_app(name: str, make_window: Callable[[], QWidget]) -> int:
    """Create the application (or reuse it), show the window, run until it closes."""
    from bone_apps.core.runfiles import quiet_library_warnings

    quiet_library_warnings()  # library chatter stays out of the terminal the app was started from
    app = QApplication.instance() or QApplication(sys.argv)
    app.setOrganizationName("bone_apps")
    app.setApplicationName(name)
    window = make_window()
    window.show()
    return app.exec()
