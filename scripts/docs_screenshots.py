"""Retake the DLPred and IoU screenshots in docs/ from the demo's fitted model.

Run `bash scripts/demo.sh` first, then `QT_QPA_PLATFORM=offscreen .venv/bin/python
scripts/docs_screenshots.py`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bone-apps-docs-")  # fresh settings

from PySide6.QtWidgets import QApplication  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo-output"


def wait_until(app: QApplication, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    if not (DEMO / "fit" / "model.pth").exists():
        raise SystemExit("run `bash scripts/demo.sh` first")
    from bone_apps.dlpred.window import DLPredWindow

    app = QApplication.instance() or QApplication(sys.argv)
    out = Path(tempfile.mkdtemp()) / "bone_04_labels"
    window = DLPredWindow()
    window.resize(1280, 800)
    window.show()
    window.scan.set_path(DEMO / "data" / "scans" / "bone_04")
    window.weights.set_path(DEMO / "fit" / "model.pth")
    window.output.set_path(out)
    wait_until(app, lambda: not window.inputs.busy())
    window.predict()
    wait_until(app, lambda: window.worker is None and out.exists())
    window.preview.set_z(20)
    app.processEvents()
    window.grab().save(str(ROOT / "docs" / "dlpred_window.png"))
    iou = window.open_iou()
    wait_until(app, lambda: iou.reference.path() is not None)
    iou.resize(900, 720)
    iou.compute()
    wait_until(app, lambda: iou.result is not None and iou.worker is None)
    iou.grab().save(str(ROOT / "docs" / "iou_window.png"))
    iou.close()
    window.close()
    shutil.rmtree(out.parent, ignore_errors=True)
    print("wrote docs/dlpred_window.png and docs/iou_window.png")


if __name__ == "__main__":
    main()
