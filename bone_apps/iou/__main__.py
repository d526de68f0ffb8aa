"""Start the IoU desktop app: `bone-iou` or `python -m bone_apps.iou`."""

from __future__ import annotations

import sys


def main() -> int:
    from bone_apps.iou.window import IoUWindow
    from bone_apps.ui.app import run_app

    return run_app("iou", IoUWindow)


if __name__ == "__main__":
    sys.exit(main())
