"""Start the DLPred desktop app: `bone-dlpred` or `python -m bone_apps.dlpred`."""

from __future__ import annotations

import sys

from bone_apps.ui.launcher import start_app


def main() -> int:
    return start_app("dlpred", "bone_apps.dlpred.window", "DLPredWindow")


if __name__ == "__main__":
    sys.exit(main())
