"""Start the DLPred desktop app: `bone-dlpred` or `python -m bone_apps.dlpred`."""

from __future__ import annotations

import sys


def main() -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # first: spawned workers of a bundle must not start the app
    from bone_apps.core.desktop.startlog import launch

    return launch("dlpred", _start)


def _start() -> int:
    from bone_apps.dlpred.window import DLPredWindow
    from bone_apps.ui.app import run_app

    return run_app("dlpred", DLPredWindow)


if __name__ == "__main__":
    sys.exit(main())
