"""Start a desktop app: one QApplication, a window, the event loop.

A failure while the app starts goes to the start log (bone_apps.core.desktop.startlog), whose place is
named in a dialog when Qt can show one and on stderr when there is one.

BONE_APPS_QUIT_AFTER=<seconds> closes the window that long after it is shown and ends the app
with the event loop's exit code (packaging/smoke.py starts each window of a bundle this way).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from PySide6.QtCore import QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from bone_apps.core.desktop import startlog

QUIT_AFTER = "BONE_APPS_QUIT_AFTER"


def _fatal_to_log(app_id: str):
    """A Qt message handler that logs Qt's fatal message, with the messages before it (Qt
    aborts right after a fatal message: this is the only chance to say why)."""
    seen: list[str] = []

    def handler(kind: QtMsgType, _context, message: str) -> None:
        startlog.say(message)
        seen.append(message)
        if kind == QtMsgType.QtFatalMsg:
            problem = (message.strip().splitlines() or ["Qt stopped"])[0]
            path = startlog.write_start_log(app_id, problem, "\n".join(seen))
            startlog.say(startlog.start_message(app_id, problem, path))
    return handler


def _show_start_error(app_id: str, message: str) -> None:
    if QApplication.platformName() in ("offscreen", "minimal"):
        return  # nobody would see a dialog, and it would wait for a click forever
    QMessageBox.critical(None, f"{startlog.title(app_id)} could not start", message)


def run_app(name: str, make_window: Callable[[], QWidget]) -> int:
    """Create the application (or reuse it), show the window, run until it closes.

    Returns the event loop's exit code, or 1 when the app could not start (logged).
    """
    from bone_apps.core.fit.runfiles import quiet_library_warnings

    quiet_library_warnings()  # library chatter stays out of the terminal the app was started from
    app = QApplication.instance()
    if app is None:
        problem = startlog.display_problem()
        if problem is not None:
            path = startlog.write_start_log(name, problem)
            startlog.say(startlog.start_message(name, problem, path))
            return 1
        previous = qInstallMessageHandler(_fatal_to_log(name))
        app = QApplication(sys.argv)
        qInstallMessageHandler(previous)
    app.setOrganizationName("bone_apps")
    app.setApplicationName(name)
    try:
        window = make_window()
        window.show()
    except Exception as exc:  # noqa: BLE001 - every start failure is logged and shown
        message, _ = startlog.record_start_error(name, exc)
        startlog.say(message)
        _show_start_error(name, message)
        return 1
    quit_after = os.environ.get(QUIT_AFTER)
    if quit_after:
        QTimer.singleShot(int(float(quit_after) * 1000), window.close)
    return app.exec()
