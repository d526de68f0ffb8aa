"""Start the DLFit desktop app: `bone-dlfit` or `python -m bone_apps.dlfit`."""

from __future__ import annotations

import sys

from bone_apps.ui.launcher import start_app


def main() -> int:
    return start_app("dlfit", "bone_apps.dlfit.window", "DLFitWindow")


if __name__ == "__main__":
    sys.exit(main())
