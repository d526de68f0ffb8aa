"""A Volume as an array napari can show: slices are read when napari asks for them."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from bone_apps.core.io.volume import Volume


class VolumeArray:
    """A read-only (Z, Y, X) array over a `core.volume.Volume`, read slice by slice on demand.

    It offers what napari needs of layer data (`shape`, `dtype`, `ndim`, `size`, indexing):
    an index whose first item is a slice number or a range reads only those slices; any other
    index (arrays of slice numbers, `None`, `...` first) reads what it names through NumPy.
    `np.asarray(array)` reads the whole volume.
    """

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.volume.shape

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.volume.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"VolumeArray({self.volume!r})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self.volume.read_slab(0, self.shape[0])
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            z = operator.index(first)
            depth = self.shape[0]
            if not -depth <= z < depth:
                raise IndexError(f"slice {z} is outside the {depth} slices of {self.volume.path}")
            plane = self.volume.read_slice(z % depth)
            return plane[rest] if rest else plane
        if isinstance(first, slice) and first.step in (None, 1):
            start, stop, _ = first.indices(self.shape[0])
            block = self.volume.read_slab(start, stop)
        elif first is None or first is Ellipsis:  # rare: read everything, let NumPy index it
            return np.asarray(self)[key]
        else:
            picks = np.arange(self.shape[0])[first]  # a stepped range, slice numbers or a mask
            if picks.ndim != 1:
                return np.asarray(self)[key]
            block = np.empty((picks.size, *self.shape[1:]), dtype=self.dtype)
            for i, z in enumerate(picks):
                self.volume.read_slice(int(z), out=block[i])
        return block[(slice(None), *rest)] if rest else block
