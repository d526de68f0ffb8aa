"""Cortical areas, slice by slice (Bouxsein et al. 2010): total, cortical and marrow area.

Ct.Ar is the area of the cortical voxels of a slice; Tt.Ar the area inside the periosteal
boundary, i.e. the cortex with every hole enclosed by it in that slice filled; Ma.Ar = Tt.Ar -
Ct.Ar (marrow, with any trabecular bone in it). A cortex broken in a slice (a foramen) encloses
nothing there, so that slice's Ma.Ar reads 0: check such slices in the per-slice lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SliceAreas:
    """Areas (voxel counts) of one slice that holds cortex."""

    z: int
    total: int
    cortical: int


def slice_areas(cortex: np.ndarray, z0: int) -> list[SliceAreas]:
    """Total and cortical voxel counts of each slice of `cortex` (bool (S, Y, X)) that holds
    any; z0 is the index of its first slice in the volume."""
    found = []
    for i, plane in enumerate(cortex):
        cortical = int(np.count_nonzero(plane))
        if cortical:
            total = int(np.count_nonzero(ndimage.binary_fill_holes(plane)))
            found.append(SliceAreas(z0 + i, total, cortical))
    return found
