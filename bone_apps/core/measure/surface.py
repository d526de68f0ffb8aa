"""Bone surface area from a smooth mesh: marching cubes on the binary mask, slab by slab.

Counting voxel faces overestimates the surface of any oblique or curved structure (by up to 50 %
for a ball); the marching-cubes isosurface at level 0.5 (Lorensen & Cline 1987, Lewiner's
variant in scikit-image) follows it far more closely. On a digital ball it reads about 9 % high.

Every cube of the mesh lies between two neighbouring slices, so slabs that share one slice
cover each cube exactly once and their areas add up to the whole volume's. The image's edges
are left open: where a structure is cut by them there is no surface. Within an ROI, only the
triangles whose centre lies in an ROI voxel count; the structure outside the ROI still shapes
the mesh, so the ROI's own edge adds no surface.
"""

from __future__ import annotations

import numpy as np


def surface_area(structure: np.ndarray, spacing_um: tuple[float, float, float],
                 roi: np.ndarray | None = None) -> float:
    """Area (um^2) of the isosurface of a binary structure.

    Args:
        structure: bool (Z, Y, X); slabs overlap by one slice so that each cube is met once.
        spacing_um: voxel edges (z, y, x) in micrometres.
        roi: bool (Z, Y, X); when given, only triangles centred in it count.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    if min(structure.shape) < 2 or not structure.any() or structure.all():
        return 0.0
    verts, faces, _, _ = marching_cubes(structure.astype(np.float32), level=0.5,
                                        spacing=tuple(float(s) for s in spacing_um),
                                        allow_degenerate=False)
    if roi is not None:
        centres = verts[faces].mean(axis=1) / np.asarray(spacing_um, dtype=np.float32)
        voxel = np.rint(centres).astype(np.int64)
        for axis, size in enumerate(roi.shape):
            np.clip(voxel[:, axis], 0, size - 1, out=voxel[:, axis])
        faces = faces[roi[voxel[:, 0], voxel[:, 1], voxel[:, 2]]]
        if not faces.size:
            return 0.0
    return float(mesh_surface_area(verts, faces))
