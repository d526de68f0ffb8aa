"""The entry point of each desktop app (`bone-dlfit`, `bone-dlpred`, `bone-iou`).

Nothing here imports Qt at module level: `multiprocessing.freeze_support()` runs first, so the
spawned workers of a bundle never start a window.
"""

from __future__ import annotations

import importlib


def start_app(name: str, module: str, window: str) -> int:
    """Run app `name` with the window class `window` of `module`; returns the exit code.

    A failure before Qt is up (a missing library) goes to the start log (startlog.launch).
    """
    import multiprocessing

    multiprocessing.freeze_support()  # first: spawned workers of a bundle must not start the app
    from bone_apps.core.desktop.startlog import launch

    def start() -> int:
        from bone_apps.ui.app import run_app

        return run_app(name, getattr(importlib.import_module(module), window))

    return launch(name, start)
