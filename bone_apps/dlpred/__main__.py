"""Start the DLPred desktop app: `bone-dlpred` or `python -m bone_apps.dlpred`."""

from __future__ import annotations

import sys


def main() -> int:
    from bone_apps.dlpred.window import DLPredWindow
    from bone_apps.ui.app import run_app

    return run_app("dlpred", DLPredWindow)


if __name__ == "__main__":
    sys.exit(main())
