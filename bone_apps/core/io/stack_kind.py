"""What a chosen path holds, before it is used: a dataset folder, a scan, or a label stack.

A window that asks for a scan must notice a dataset root or a label mask chosen by mistake,
and a window that asks for a mask must notice a scan. These checks read only a few slices.
No Qt here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bone_apps.core.io.formats import location
from bone_apps.core.io.labels import MAX_LABEL_VALUES, value_preview
from bone_apps.core.io.volume import Volume

SAMPLED_SLICES = 5  # slices read to judge a stack: first, last and evenly between
MASK_FOLDERS = ("masks",)


def is_dataset_root(path: str | os.PathLike) -> bool:
    """Whether `path` is a dataset folder laid out as ROOT/scans/<id> and ROOT/masks/<id> (any
    volume format: pairs.volumes_in lists what they hold)."""
    path = Path(path).expanduser()
    return (path / "scans").is_dir() and (path / "masks").is_dir()


def dataset_root_problem(path: str | os.PathLike, role: str = "scan") -> str | None:
    """One sentence when `path` is a dataset folder given where one `role` stack is needed.

    Returns:
        The message (naming the folder and where to choose inside it), or None.
    """
    path = Path(path).expanduser()
    if not is_dataset_root(path):
        return None
    inside = path / ("masks" if role == "mask" else "scans")
    return (f"{path} is a dataset folder (it holds scans/ and masks/), not one {role}: choose one "
            f"{role} inside {inside}.")


def sampled_values(volume: Volume, slices: int = SAMPLED_SLICES) -> np.ndarray:
    """The distinct values of a few evenly spaced slices (first and last included), sorted."""
    depth = volume.shape[0]
    picks = sorted({int(round(z)) for z in np.linspace(0, depth - 1, min(slices, depth))})
    values: set = set()
    for z in picks:
        values |= set(np.unique(volume.read_slice(z)).tolist())
    return np.array(sorted(values))


def label_stack_reason(volume: Volume, slices: int = SAMPLED_SLICES) -> str | None:
    """Why `volume` looks like a label mask rather than a scan, or None when it looks like a scan.

    A label mask sits in a `masks/` folder, or holds few distinct whole-number values
    (at most MAX_LABEL_VALUES in the sampled slices); a scan's noise gives it many more.

    Returns:
        A sentence fragment (no final full stop) saying why, e.g. "it sits in a masks/ folder",
        or None.
    """
    path = location(volume.path)  # an HDF5 file or OME-Zarr store, not a dataset or level inside
    if path.parent.name in MASK_FOLDERS:
        return f"it sits in a {path.parent.name}/ folder, where label masks are kept"
    values = sampled_values(volume, slices)
    if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
        return None
    if len(values) <= MAX_LABEL_VALUES:
        return (f"it holds only {len(values)} distinct values ({value_preview(values)}) in "
                f"{min(slices, volume.shape[0])} sampled slices, as a label mask does")
    return None

