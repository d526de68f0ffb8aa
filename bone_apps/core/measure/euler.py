"""Euler characteristic of a structure and its contribution to the structure it was cut from.

The structure is the union of its voxels as closed unit cubes (26-connected; its background
6-connected), a cell complex whose Euler characteristic is vertices - edges + faces - cubes
(Toriwaki & Yonekura 2002). It equals skimage.measure.euler_number(connectivity=3).

A sample cut from a larger structure (a cube of trabecular bone) is measured by its
contribution to that structure's Euler characteristic, Delta-chi (Odgaard & Gundersen 1993). BoneJ's
Connectivity computes it as chi minus a correction, chi_2/2 + chi_1/4 + chi_0/8, from the
structure's intersections with the stack's faces, edges and corners. The same number comes out
of weighting every cell by the share of its incident voxels (8 around a vertex, 4 around an
edge, 2 on a face, 1 for a cube) that lie inside the sampled region: a cell on a face of the
stack is shared by two such regions, one on an edge by four, one at a corner by eight. Written
that way, the correction works for any region, so with an ROI each cell of the structure counts
by its share of ROI voxels, and the structure just outside the ROI is taken as it is (not cut).

Connectivity (beta_1, the number of independent loops) is 1 - Delta-chi for one connected
structure without enclosed cavities (BoneJ's Purify makes it so; here it is the user's mask).

Counts are kept in eighths, in integers, so slabs add up exactly to the whole volume.
"""

from __future__ import annotations

import itertools

import numpy as np


def _views(array: np.ndarray, span: tuple[int, int, int], slices: int, last: bool) -> list[np.ndarray]:
    """The incident voxels of every cell of one kind, one view per position around the cell.

    `array` holds a halo slice before and after the slab's `slices` and a border of one voxel
    in y and x. A kind spans an axis when its cells lie between two voxels along it.
    """
    extra = 1 if last else 0
    z = [slice(1, slices + 1)] if not span[0] else [slice(0, slices + extra),
                                                     slice(1, slices + 1 + extra)]
    y = [slice(1, -1)] if not span[1] else [slice(0, -1), slice(1, None)]
    x = [slice(1, -1)] if not span[2] else [slice(0, -1), slice(1, None)]
    return [array[a, b, c] for a in z for b in y for c in x]


def euler_eighths(structure: np.ndarray, region: np.ndarray, last: bool) -> int:
    """Eight times the contribution of the cells a slab owns to Delta-chi of `structure` in `region`.

    Args:
        structure, region: bool (S + 2, Y, X): the slab's S slices with one slice before and one
            after (all False outside the volume). `region` is the ROI (the whole volume without one).
        last: whether the slab ends at the volume's last slice (it then owns the closing plane).

    A slab owns the cubes, and the faces and edges between voxels of the same slice, of its own
    slices, and the cells of the planes before each of them.
    """
    slices = structure.shape[0] - 2
    f = np.pad(structure.astype(bool, copy=False), ((0, 0), (1, 1), (1, 1)))
    r = np.pad(region.astype(bool, copy=False), ((0, 0), (1, 1), (1, 1)))
    total = 0
    for span in itertools.product((0, 1), repeat=3):
        spanned = sum(span)
        sign = -1 if (3 - spanned) % 2 else 1
        weight = 8 >> spanned  # eighths of a cell per incident voxel
        occupied = np.logical_or.reduce(_views(f, span, slices, last))
        shares = sum(int(np.count_nonzero(occupied & view))
                     for view in _views(r, span, slices, last))
        total += sign * weight * shares
    return total
