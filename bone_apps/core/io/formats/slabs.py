"""Chunked formats (Zarr, HDF5) read a slab at a time, the slab read last kept.

Chunked data is decoded a whole chunk at a time, so reading one slice of a chunk several
slices deep would decode the chunk once per slice. A `SlabVolume` instead reads the slab of
whole chunks that holds the slice and keeps it: read in order (as prediction, statistics and
scoring read), a slab spans READ_AHEAD slices at least, whose chunks a reader may decode in
parallel; read at random (as the fit sampler reads), it is one chunk deep. Memory holds one
slab, whatever the stack's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bone_apps.core.io.volume import Volume, VoxelSize

SLAB_CACHE_BYTES = 256 << 20  # a chunk-deep slab larger than this is read slice by slice
READ_AHEAD = 8  # slices read at once when slices are read in order (whole chunks)
READ_AHEAD_BYTES = 64 << 20  # ... unless that would hold more than this


class SlabVolume(Volume):
    """A volume stored in chunks `chunk_depth` slices deep (see the module's docstring);
    subclasses implement `_read(z0, z1)`."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None, chunk_depth: int) -> None:
        super().__init__(path, shape, dtype, voxel_size)
        plane = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self.chunk_depth = max(1, chunk_depth) if max(1, chunk_depth) * plane <= SLAB_CACHE_BYTES else 1
        chunks = max(1, min(READ_AHEAD, READ_AHEAD_BYTES // plane) // self.chunk_depth)
        self._ahead_depth = self.chunk_depth * chunks  # slices of a slab read in order
        self._slab: tuple[int, np.ndarray] | None = None  # (first slice, slices) read last
        self._last = -1  # the slice read last

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_slab"] = None
        return state

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read slice z; the slab read with it is kept, so the next slices cost no decoding.

        Read in order, the slice is a read-only view of that slab (no copy: whoever reads in
        order moves on); read at random, it is a copy, so that a cache of slices never keeps
        whole slabs alive.
        """
        self._check_index(z)
        with self._lock:
            in_order, self._last = z in (0, self._last + 1), z
            slab = self._slab
            if slab is None or not slab[0] <= z < slab[0] + len(slab[1]):
                depth = self._ahead_depth if in_order else self.chunk_depth
                if depth == 1:
                    return super().read_slice(z, out)
                start = z - z % self.chunk_depth
                slab = (start, self._read(start, min(start + depth, self.shape[0])))
                slab[1].flags.writeable = False
                self._slab = slab
        data = slab[1][z - slab[0]]
        if out is not None:
            out[...] = data
            return out
        return data if in_order else data.copy()
