"""Start the IoU desktop app: `bone-iou` or `python -m bone_apps.iou`."""

from __future__ import annotations

import sys


def main() -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # first: spawned workers of a bundle must not start the app
    from bone_apps.core.desktop.startlog import launch

    return launch("iou", _start)


def _start() -> int:
    from bone_apps.iou.window import IoUWindow
    from bone_apps.ui.app import run_app

    return run_app("iou", IoUWindow)


if __name__ == "__main__":
    sys.exit(main())
