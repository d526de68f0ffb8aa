"""The test input of an export: one network input cut from a scan, in raw intensities.

The block comes from the middle of the user's scan when one is given, else of a generated
sample scan (synthetic.make_sample_scan with a fixed seed, so that exporting twice gives the
same test tensors). Its in-plane size is the model's patch size rounded up to the network's
multiple, at most TEST_SIDE_MAX; 3D blocks are the patch depth deep, at most TEST_DEPTH_MAX.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.data.normalize import P_HIGH, P_LOW, ScanStats
from bone_apps.core.errors import BoneAppsError

if TYPE_CHECKING:
    from bone_apps.core.model.spec import ModelSpec

TEST_SIDE_MAX = 256
TEST_DEPTH_MAX = 64
SAMPLE_SEED = 0


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


def block_size(spec: ModelSpec, meta: dict) -> tuple[int, int]:
    """(depth, side) of the test block: depth is the slices a 3D input holds (1 otherwise)."""
    multiple = spec.required_multiple
    side = min(_round_up(int(meta.get("patch_size") or TEST_SIDE_MAX), multiple),
               max(multiple, TEST_SIDE_MAX // multiple * multiple))
    depth = 1
    if spec.dims == "3d":
        deepest = max(multiple, TEST_DEPTH_MAX // multiple * multiple)
        depth = min(_round_up(spec.patch_depth, multiple), deepest)
    return depth, side


def sample_block(spec: ModelSpec, meta: dict, scan: str | os.PathLike | None = None) -> np.ndarray:
    """Raw intensities (float32) of one network input from the middle of `scan` (or of a
    generated sample scan): (1, C, H, W) for 2D and 2.5D (C = 2k+1 neighbouring slices, the
    scan's edge slices replicated), (1, 1, D, H, W) for 3D.

    Raises:
        VolumeError: `scan` cannot be read.
        BoneAppsError: `scan` is smaller than one network input.
    """
    depth, side = block_size(spec, meta)
    multiple = spec.required_multiple
    slices = depth if spec.dims == "3d" else 2 * spec.context + 1
    if scan is None:
        from bone_apps.core.data.synthetic import make_sample_scan

        sample = make_sample_scan((max(16, slices), side, side), np.random.default_rng(SAMPLE_SEED))
        stack = sample.scan
    else:
        from bone_apps.core.io.volume import open_volume

        with open_volume(scan) as volume:
            nz, ny, nx = volume.shape
            fit = min(ny, nx) // multiple * multiple
            if fit < multiple or (spec.dims == "3d" and nz < multiple):
                need = f"{multiple} x {multiple}" + (f" x {multiple} slices" if spec.dims == "3d" else "")
                raise BoneAppsError(f"{scan} ({nz} x {ny} x {nx} voxels) is smaller than one input of "
                                    f"this network ({need}): choose a larger scan for --sample.")
            side = min(side, fit)
            if spec.dims == "3d":
                slices = depth = min(depth, nz // multiple * multiple)
            y0, x0 = (ny - side) // 2, (nx - side) // 2
            middle = nz // 2 - slices // 2
            rows = [min(max(z, 0), nz - 1) for z in range(middle, middle + slices)]
            stack = np.stack([volume.read_slice(z)[y0:y0 + side, x0:x0 + side] for z in rows])
    nz = stack.shape[0]
    first = nz // 2 - slices // 2
    y0, x0 = (stack.shape[1] - side) // 2, (stack.shape[2] - side) // 2
    block = stack[first:first + slices, y0:y0 + side, x0:x0 + side].astype(np.float32)
    return block[None, None] if spec.dims == "3d" else block[None]


def block_stats(block: np.ndarray) -> ScanStats:
    """Intensity statistics of the block itself, as normalize.compute_stats would give for a
    scan holding only these voxels (what a runner without the whole scan can use)."""
    data = block.astype(np.float64).ravel()
    if data.size == 0 or not math.isfinite(float(data.sum())):
        raise BoneAppsError("the test input holds no usable intensities: choose another --sample scan.")
    p_low, p_high = np.percentile(data, (P_LOW, P_HIGH))
    return ScanStats(mean=float(data.mean()), std=float(data.std()), min=float(data.min()),
                     max=float(data.max()), p_low=float(p_low), p_high=float(p_high))
