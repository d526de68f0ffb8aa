"""IoU's "Try with sample data": a sample mask as the reference, DLPred's output as the prediction."""

from __future__ import annotations

from pathlib import Path

from bone_apps.core.data.synthetic import CLASS_NAMES
from bone_apps.dlpred.bridge import default_output
from bone_apps.ui.sample_data import sample_mask, sample_scan


def use_sample(window, root: Path) -> str:
    """Fill IoU's fields from the sample dataset at `root`; returns what to press next."""
    reference, prediction = sample_mask(root), default_output(sample_scan(root))
    window.reference.set_path(reference)
    window.prediction.set_path(prediction)
    window.class_names.setText(",".join(CLASS_NAMES))
    if not prediction.exists():
        return (f"The sample mask {reference.name} is filled in as the reference, but there is no "
                f"prediction yet: predict the sample scan {reference.name} in DLPred first (its "
                f"“Try with sample data…” with this same folder), which writes {prediction}; "
                "then press Compute.")
    return (f"The sample mask {reference.name} and DLPred's prediction of it are filled in. "
            "Next: press Compute to score the prediction.")
