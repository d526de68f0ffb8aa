"""The start log of the desktop apps: what went wrong while DLFit, DLPred or IoU started.

A double-clicked app has no console, so a failure during start (no display, a missing system
library, an unwritable home folder) is written to a log file whose place the app names in its
dialog: `<config dir>/bone_apps/logs/<app>-start.log` (config dir as for shortcuts:
$XDG_CONFIG_HOME or ~/.config on Linux, %APPDATA% on Windows, ~/Library/Application Support on
macOS), or `<temp dir>/bone_apps-<app>-start.log` when that folder cannot be written. The file
holds the latest failure only and is rewritten, atomically, at the next one.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.outputs import make_dirs, write_atomic

HEADER = "bone_apps start log"  # the first line of every start log (nothing else is rewritten)
TITLES = {"dlfit": "DLFit", "dlpred": "DLPred", "iou": "IoU"}


def title(app: str) -> str:
    """The name a user knows `app` by (DLFit for dlfit)."""
    return TITLES.get(app, app)


def log_paths(app: str) -> list[Path]:
    """Where the start log of `app` goes, first choice first."""
    from bone_apps.core.desktop.shortcuts import config_dir

    name = f"{app}-start.log"
    places = []
    try:
        places.append(config_dir() / "logs" / name)
    except (OSError, RuntimeError):  # no home folder at all
        pass
    places.append(Path(tempfile.gettempdir()) / f"bone_apps-{name}")
    return places


def _is_ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(HEADER)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def report(app: str, problem: str, details: str = "") -> str:
    """The text of a start log: when, what, the versions at hand and the details."""
    from bone_apps import __version__

    frozen = " (bundle)" if getattr(sys, "frozen", False) else ""
    lines = [
        HEADER,
        f"time: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"app: {app}, bone_apps {__version__}{frozen}",
        f"python: {sys.version.split()[0]} at {sys.executable}",
        f"system: {platform.platform()}",
        f"display: DISPLAY={os.environ.get('DISPLAY', '')!r} "
        f"WAYLAND_DISPLAY={os.environ.get('WAYLAND_DISPLAY', '')!r} "
        f"QT_QPA_PLATFORM={os.environ.get('QT_QPA_PLATFORM', '')!r}",
        f"problem: {problem}",
    ]
    if details:
        lines += ["", details.rstrip()]
    return "\n".join(lines) + "\n"


def write_start_log(app: str, problem: str, details: str = "") -> Path | None:
    """Write the start log of `app` at the first place that takes it; its path, or None."""
    text = report(app, problem, details)
    for path in log_paths(app):
        if not _is_ours(path):
            continue  # a file bone_apps did not write stays as it is
        try:
            make_dirs(path.parent)
            return write_atomic(path, text)
        except (OSError, BoneAppsError):
            continue
    return None


def record_start_error(app: str, exc: BaseException) -> tuple[str, Path | None]:
    """Log an exception raised while `app` started; the sentence to show and the log's path."""
    problem = str(exc) if isinstance(exc, BoneAppsError) else f"{type(exc).__name__}: {exc}"
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    path = write_start_log(app, problem, details)
    return start_message(app, problem, path), path


def start_message(app: str, problem: str, path: Path | None) -> str:
    """The sentence a user sees: what went wrong and where the details are."""
    where = f" Details are in {path}." if path is not None else " No log file could be written."
    return f"{title(app)} could not start: {problem.rstrip('.')}.{where}"


def display_problem() -> str | None:
    """On Linux, why no window can be shown (no display to connect to); None elsewhere or when fine."""
    if not sys.platform.startswith("linux"):
        return None
    platform_name = os.environ.get("QT_QPA_PLATFORM", "")
    if platform_name and not platform_name.startswith(("xcb", "wayland")):
        return None  # offscreen, vnc, eglfs...: no desktop session needed
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("there is no display to open a window on (neither DISPLAY nor WAYLAND_DISPLAY is set): "
            "start it from a desktop session, or use the bone command line")


def say(message: str) -> None:
    """Print to stderr when there is one (a windowed bundle on Windows has none)."""
    stream = sys.stderr
    if stream is not None:
        try:
            print(message, file=stream, flush=True)
        except (OSError, ValueError):
            pass


def launch(app: str, start: Callable[[], int]) -> int:
    """Run `start` (which imports Qt and runs the app); a failure before Qt is up is logged.

    Returns `start`'s exit code, or 1 when it raised: the exception is written to the start
    log and one sentence naming it goes to stderr (no dialog: Qt itself may be what failed).
    """
    try:
        return start()
    except Exception as exc:  # noqa: BLE001 - a missing library, a broken install: log it
        message, _ = record_start_error(app, exc)
        say(message)
        return 1
