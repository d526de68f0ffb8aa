"""napari reader: every volume `core.volume.open_volume` reads, opened lazily with its voxel size.

The reader has no format code of its own: a path is handed to `open_volume` (TIFF folders and
files, OME-Zarr, NIfTI, HDF5, and whatever formats it learns), and napari receives a
`VolumeArray` that reads slices when they are shown. The voxel size (micrometres) becomes the
layer's scale, so measurements and 3D views in napari are in real units. A stack that looks
like a label mask (few whole-number values, or kept in a masks/ folder) opens as a labels layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bone_apps.core.io import formats
from bone_apps.core.io.stack_kind import label_stack_reason
from bone_apps.core.io.tiff import list_tiff_files
from bone_apps.core.io.volume import Volume, open_volume, volume_id
from bone_apps.napari_plugin.lazy import VolumeArray

LayerData = tuple[Any, dict, str]  # (data, layer keyword arguments, layer type)
AXES = ("z", "y", "x")
UNIT = "micrometer"


def napari_get_reader(path: str | Sequence[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for one path that may be a volume, else None.

    napari hands over several paths only to stack them into one layer, which a volume already
    is: those are left to other readers. Deciding looks at the name and a folder's listing
    only; a file that turns out unreadable gets open_volume's one-sentence error when read.
    """
    if not isinstance(path, (str, os.PathLike)) or not may_be_volume(path):
        return None
    return read_volume


def may_be_volume(path: str | os.PathLike) -> bool:
    """Whether a path names something open_volume may read: a file of a volume format, an
    HDF5 dataset (`file.h5:/path`), a Zarr store, or a folder holding TIFF files."""
    path = Path(path)
    if formats.form_of_name(path) is not None:
        return True
    try:
        return path.is_dir() and (formats.is_zarr_store(path) or bool(list_tiff_files(path)[0]))
    except OSError:  # a folder that cannot be listed is no volume of ours
        return False


def read_volume(path: str | os.PathLike) -> list[LayerData]:
    """The volume at `path` as one lazily read layer (napari's reader function).

    Raises:
        VolumeError: open_volume cannot read it (one sentence naming the file and the fix).
    """
    return [volume_layer(open_volume(path))]


def volume_layer(volume: Volume) -> LayerData:
    """napari layer data for an opened volume: an image, or labels when it looks like a mask."""
    meta: dict[str, Any] = {"name": volume_id(volume.path), "axis_labels": AXES,
                            "metadata": {"bone_apps": {"path": str(volume.path)}}}
    if volume.voxel_size is not None:
        size = volume.voxel_size
        meta["scale"] = (size.z, size.y, size.x)
        meta["units"] = (UNIT,) * 3
        meta["metadata"]["bone_apps"]["voxel_size_um"] = [size.z, size.y, size.x]
    labels = np.issubdtype(volume.dtype, np.integer) and label_stack_reason(volume) is not None
    return VolumeArray(volume), meta, "labels" if labels else "image"
