"""Start the DLFit desktop app: `bone-dlfit` or `python -m bone_apps.dlfit`."""

from __future__ import annotations

import sys


def main() -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # first: spawned workers of a bundle must not start the app
    from bone_apps.core.desktop.startlog import launch

    return launch("dlfit", _start)


def _start() -> int:
    from bone_apps.dlfit.window import DLFitWindow
    from bone_apps.ui.app import run_app

    return run_app("dlfit", DLFitWindow)


if __name__ == "__main__":
    sys.exit(main())
