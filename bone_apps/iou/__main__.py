"""Start the IoU desktop app: `bone-iou` or `python -m bone_apps.iou`."""

from __future__ import annotations

import sys

from bone_apps.ui.launcher import start_app


def main() -> int:
    return start_app("iou", "bone_apps.iou.window", "IoUWindow")


if __name__ == "__main__":
    sys.exit(main())
