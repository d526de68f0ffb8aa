"""From a finished fit to DLPred: open the prediction window with the run's model filled in."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMainWindow

from bone_apps.core.fit import runfiles
from bone_apps.dlfit.runner import run_status


def finished_model(out: Path | None) -> Path | None:
    """The best weights of the finished run in `out`, or None when `out` holds no finished run."""
    if out is None or run_status(out) != "completed":
        return None
    model = Path(out) / runfiles.MODEL
    return model if model.is_file() else None


def open_dlpred(weights: Path, window: QMainWindow | None = None) -> QMainWindow:
    """Show a DLPred window (`window` when it is still open, else a new one) with `weights`
    chosen as its model; returns the window shown."""
    from bone_apps.dlpred.window import DLPredWindow  # the prediction app loads only when asked

    if window is None or not window.isVisible():
        window = DLPredWindow()
    window.weights.set_path(weights)
    window.show()
    window.raise_()
    window.activateWindow()
    return window
