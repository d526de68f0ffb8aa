"""DLFit's "Try with sample data": the sample pairs, an output folder beside them, Easy mode."""

from __future__ import annotations

from pathlib import Path

from bone_apps.dlfit.handover import finished_model

FIT_FOLDER = "fit"  # the sample run's output, inside the sample dataset
SAMPLE_EPOCHS = 5  # a fit to look at within minutes: one epoch of the samples took 1.8 CPU-minutes


def use_sample(window, root: Path) -> str:
    """Fill DLFit's fields from the sample dataset at `root`; returns what to press next."""
    window.set_mode(advanced=False)
    window.pairs.clear()
    count = window.pairs.add_dataset_root(root)
    window.out.set_path(root / FIT_FOLDER)
    window.easy_epochs.setValue(SAMPLE_EPOCHS)
    if finished_model(root / FIT_FOLDER) is not None:
        return (f"{count} sample pairs are filled in, and {root / FIT_FOLDER} already holds a "
                "fitted model: press “Predict with this model…” to segment a scan with it, or "
                "raise Epochs and press Resume to fit it further.")
    return (f"{count} sample pairs and an output folder are filled in (Easy mode, "
            f"{SAMPLE_EPOCHS} epochs). Next: press Start to fit a model on them; when it has "
            "finished, press “Predict with this model…”.")
