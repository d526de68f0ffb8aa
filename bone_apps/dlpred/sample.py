"""DLPred's "Try with sample data": a sample scan, its output, and a model when one exists."""

from __future__ import annotations

from pathlib import Path

from bone_apps.core.fit import runfiles
from bone_apps.dlpred.bridge import default_output
from bone_apps.ui.sample_data import sample_scan


def found_model(root: Path) -> Path | None:
    """The newest model.pth under `root` (a fit DLFit ran on the sample data), or None."""
    models = [path for path in Path(root).rglob(runfiles.MODEL) if path.is_file()]
    return max(models, key=lambda path: path.stat().st_mtime) if models else None


def use_sample(window, root: Path) -> str:
    """Fill DLPred's fields from the sample dataset at `root`; returns what to press next."""
    scan = sample_scan(root)
    window.scan.set_path(scan)
    window.output.set_path(default_output(scan))
    weights = window.weights.path()
    if weights is None or not weights.is_file():
        weights = found_model(root)
        if weights is not None:
            window.weights.set_path(weights)
    if weights is None:
        window.weights.edit.clear()
        return (f"The sample scan {scan.name} is filled in, but there is no model yet: fit one in "
                "DLFit first (its “Try with sample data…” with this same folder, then Start), "
                "then choose its model.pth under Weights and press Predict.")
    return (f"The sample scan {scan.name} and the model {weights} are filled in. Next: press "
            "Predict; when the labels are written, press “Score in IoU…”.")
