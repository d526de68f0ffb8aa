"""HDF5 datasets (`file.h5:/path/to/dataset`): reading them as volumes, and writing HDF5 outputs.

Axes: a 3D dataset is (Z, Y, X), in C order as h5py and NumPy-based writers store it; axes of
size 1 beyond three are dropped (ilastik's (z, y, x, 1)); a 2D dataset is one slice.

Voxel size: the dataset's `element_size_um` attribute, (z, y, x) in micrometres (the
convention of Fiji's HDF5 plugin and ilastik).

Naming the dataset: `file.h5:/path/to/dataset`, or the file alone when it holds exactly one
dataset of two or more dimensions.

Reading: through h5py a slab of whole chunks at a time (formats/slabs.py), so each chunk is
decoded once; a contiguous, uncompressed dataset can also be memory-mapped. Compression
filters outside HDF5 itself (Blosc, bitshuffle, LZ4...) are read when the hdf5plugin package
is installed.

Writing: one new file per output, holding the volume in `/data` (chunks of one slice, gzip, as
every HDF5 reader decodes), `element_size_um`, and a `written_by` attribute on the file, the
proof that bone_apps wrote it which `--overwrite` checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bone_apps.core.errors import VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.formats.slabs import SlabVolume
from bone_apps.core.io.volume import Reader, VoxelSize, register_reader, short_error

VOXEL_ATTRIBUTE = "element_size_um"
TILE = 1024
_READ_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)


def _load_filters() -> None:
    """Register the compression filters of hdf5plugin when it is installed."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


def _open_file(file: Path):
    import h5py

    _load_filters()
    try:
        return h5py.File(file, "r")
    except (OSError, ValueError) as exc:
        raise VolumeError(f"{file} is not a readable HDF5 file ({short_error(exc)}): copy it again or "
                          "re-export it.") from exc


def _image_datasets(handle) -> list[str]:
    """Paths of the datasets of two or more dimensions in an open file."""
    import h5py

    found: list[str] = []

    def visit(name: str, node) -> None:
        if isinstance(node, h5py.Dataset) and len(node.shape) >= 2:
            found.append("/" + name)

    handle.visititems(visit)
    return found


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


class Hdf5Volume(SlabVolume):
    """An HDF5 dataset read as (Z, Y, X), slab by slab (formats/slabs.py)."""

    kind = "hdf5"
    _handles = ("_file",)

    def __init__(self, path: Path, file: Path, dataset: str, shape: tuple[int, int, int],
                 dtype: np.dtype, voxel_size: VoxelSize | None, roles: list[int | None],
                 stored_dtype: np.dtype, offset: int | None, chunk_depth: int) -> None:
        super().__init__(path, shape, dtype, voxel_size, chunk_depth)
        self.file = file
        self.dataset = dataset
        self.roles = roles
        self._stored_dtype = stored_dtype
        self._offset = offset  # byte offset of a contiguous, uncompressed dataset

    def _read(self, z0: int, z1: int) -> np.ndarray:
        try:
            with self._lock:
                if self._file is None:
                    self._file = _open_file(self.file)
                data = self._file[self.dataset][formats.zyx_index(self.roles, z0, z1)]
        except VolumeError:
            raise
        except _READ_ERRORS as exc:
            where = f"slice {z0 + 1}" if z1 == z0 + 1 else f"slices {z0 + 1} to {z1}"
            if "filter" in str(exc).lower() or "plugin" in str(exc).lower():
                raise VolumeError(f"{where} of {self.path} is compressed with a filter this HDF5 library "
                                  f"lacks ({short_error(exc)}): run 'pip install hdf5plugin'.") from exc
            raise VolumeError(f"{where} of {self.path} cannot be read ({short_error(exc)}): the file is "
                              "damaged, so copy it again or re-export it.") from exc
        return np.ascontiguousarray(formats.as_zyx(data, self.roles), dtype=self.dtype)

    def memmap_slice(self, z: int) -> np.ndarray | None:
        """Slice z as a read-only memory map of a contiguous, uncompressed dataset, else None."""
        if self._offset is None:
            return None
        plane = self.shape[1] * self.shape[2]
        try:
            mapped = np.memmap(self.file, dtype=self._stored_dtype, mode="r",
                               offset=self._offset + z * plane * self._stored_dtype.itemsize,
                               shape=self.shape[1:])
        except (OSError, ValueError) as exc:
            raise VolumeError(f"{self.path} could not be read ({short_error(exc)}): check the file or "
                              "re-export it.") from exc
        return mapped.view(np.ndarray)


def open_hdf5(file: Path, dataset: str | None) -> Hdf5Volume:
    """Open dataset `dataset` of an HDF5 file (None: its only image dataset), headers only.

    Raises:
        VolumeError: unreadable file, no such dataset (naming those there are), a group
            named instead of a dataset, several datasets and none named, 4D data.
    """
    import h5py

    with _open_file(file) as handle:
        if dataset is None:
            found = _image_datasets(handle)
            if not found:
                raise VolumeError(f"{file} holds no image dataset: choose the HDF5 file that holds the scan.")
            if len(found) > 1:
                raise VolumeError(f"{file} holds {len(found)} datasets ({_listing(found)}): name the one to "
                                  f"use, e.g. {file}:{found[0]}.")
            dataset = found[0]
        node = handle.get(dataset)
        if node is None or not isinstance(node, h5py.Dataset):
            found = _image_datasets(handle)
            group = isinstance(node, h5py.Group)
            what = "is a group, not a dataset" if group else f"has no dataset {dataset}"
            subject = f"{file}:{dataset}" if group else str(file)
            there = f" (it holds {_listing(found)})" if found else " (it holds no image dataset)"
            example = f", e.g. {file}:{found[0]}" if found else ""
            raise VolumeError(f"{subject} {what}{there}: name a dataset of the file{example}.")
        path = Path(f"{file}:{dataset}")
        (z, y, x), roles = formats.zyx_axes(str(path), node.shape)
        stored = np.dtype(node.dtype)
        if stored.fields is not None or stored.kind not in "uifb":
            raise VolumeError(f"{path} holds {stored} values, not greyscale voxels: save the scan as "
                              "8- or 16-bit greyscale.")
        voxel = None
        size = node.attrs.get(VOXEL_ATTRIBUTE)
        if size is not None and np.size(size) == 3 and all(float(v) > 0 for v in np.ravel(size)):
            vz, vy, vx = (float(v) for v in np.ravel(size))
            voxel = VoxelSize(z=vz, y=vy, x=vx)
        offset = None
        if node.chunks is None and node.compression is None and not node.external:
            found_offset = node.id.get_offset()
            offset = None if found_offset is None else int(found_offset)
        dtype = np.dtype(np.uint8) if stored.kind == "b" else stored.newbyteorder("=")
        if stored.kind == "b":
            offset = None
        depth = next((int(c) for c, role in zip(node.chunks or (), roles) if role == 0), 1)
        return Hdf5Volume(path, file, dataset, (z, y, x), dtype, voxel, roles, stored, offset, depth)


def is_ours(path: Path) -> bool:
    """Whether bone_apps wrote this HDF5 file (its `written_by` attribute says so)."""
    from bone_apps.core.io.outputs import is_written_by_us

    try:
        with _open_file(path) as handle:
            value = handle.attrs.get("written_by")
    except (VolumeError, *_READ_ERRORS):
        return False
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return is_written_by_us(value)


class Hdf5Sink:
    """Writes a (Z, Y, X) volume as dataset `dataset` of a new HDF5 file `partial`, slice by slice."""

    def __init__(self, partial: Path, target: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None, dataset: str = formats.DEFAULT_HDF5_DATASET) -> None:
        import h5py

        from bone_apps.core.io.outputs import WRITTEN_BY

        self._file = h5py.File(partial, "w")
        chunks = (1, min(shape[1], TILE), min(shape[2], TILE))
        self._data = self._file.create_dataset(dataset.lstrip("/"), shape=shape, dtype=dtype, chunks=chunks,
                                               compression="gzip", compression_opts=1, fillvalue=0)
        if voxel_size is not None:
            self._data.attrs[VOXEL_ATTRIBUTE] = np.array([voxel_size.z, voxel_size.y, voxel_size.x])
        self._file.attrs["written_by"] = WRITTEN_BY

    def write(self, z: int, slice_: np.ndarray) -> None:
        self._data[z] = slice_

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_dataset(path: Path) -> Hdf5Volume:
    """Open `file.h5:/path/to/dataset`, or the file's one image dataset."""
    return open_hdf5(*formats.split_hdf5(path))


register_reader(Reader(kind="hdf5", open=_open_dataset, suffixes=formats.HDF5_SUFFIXES, folders=True))
