"""Scans and masks on disk: the one `Volume` interface every format is read through.

A `Volume` is a lazily read (Z, Y, X) stack. `open_volume` picks the reader by what a path
holds, from a registry filled by the reader modules themselves: TIFF (core/io/tiff.py: a folder
of slices or a multi-page file) and the formats of core/io/formats/ (OME-Zarr images and levels,
NIfTI files, HDF5 datasets `file.h5:/path`). A new format is one module that subclasses
`Volume` and calls `register_reader`. Writing is core/io/writer.py.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from bone_apps.core.errors import ShapeMismatchError, VolumeError
from bone_apps.core.io import formats

SCAN_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))
MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True)
class SourceFormat:
    """What an output written in its scan's own format copies from the scan's file.

    Attributes:
        kind: the format ("nifti", "zarr").
        details: NIfTI: the file's header (affine as qform/sform with their codes, units);
            OME-Zarr: the version ("0.4" or "0.5").
    """

    kind: str
    details: bytes | str


@dataclass(frozen=True)
class VoxelSize:
    """Edge lengths of one voxel in micrometres, (z, y, x) order.

    `source` (see `with_source`) travels with the size from a scan to its outputs (labels,
    probabilities, clean-up), so that an output in the scan's own format lands where the scan
    is (NIfTI: the same affine). It is not a field: equality, hashing and astuple see the
    size alone.
    """

    z: float
    y: float
    x: float
    source: ClassVar[SourceFormat | None] = None

    @classmethod
    def with_source(cls, z: float, y: float, x: float, source: SourceFormat | None) -> VoxelSize:
        """A voxel size that remembers the format details of the file it was read from."""
        size = cls(z, y, x)
        object.__setattr__(size, "source", source)
        return size

    def __str__(self) -> str:
        if self.z == self.y == self.x:
            return f"{self.x:g} um"
        return f"{self.z:g} x {self.y:g} x {self.x:g} um (z, y, x)"


def volume_id(path: str | os.PathLike) -> str:
    """A scan's or mask's name: its folder name, or its file or store name without the format's
    suffix (.tif, .ome.tif, .ome.zarr, .zarr, .nii, .nii.gz, .h5, .hdf5); an HDF5 dataset and an
    OME-Zarr level are named after their file or store (pairs match on it; outputs are named
    after it)."""
    return formats.strip_suffix(formats.location(path).name)


def natural_key(name: str) -> list:
    """Sort key that orders 's_2.tif' before 's_10.tif'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]



def short_error(exc: BaseException) -> str:
    """An exception's text cut to one line that fits in a message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class Volume:
    """A lazily read 3D stack of shape (Z, Y, X): the one interface every format is read through.

    fit, predict, iou and measure see only this. Pixels leave a file through `read_slice`
    and `read_slab` alone, so memory follows the slices asked for, never the stack's length.
    A subclass reads one format: it sets `kind`, implements `_read(z0, z1)` (or overrides
    `read_slice` and `read_slab`), may offer `memmap_slice`, and names in `_handles` the
    attributes holding open files, which pickling drops so that worker processes reopen them.

    Attributes:
        path: what it was opened from: a folder, a file, an OME-Zarr image or level, or
            `file.h5:/path/to/dataset`.
        shape: (Z, Y, X).
        dtype: pixel type (native byte order).
        voxel_size: micrometres per voxel, or None when the files do not say.
        slice_names: one file name per slice (synthesised where slices are not files).
        skipped: names of files in the folder that were left out: not TIFF, hidden (.DS_Store,
            macOS '._*' companions) or links to nothing.
    """

    kind = "volume"  # the format: "tiff", "zarr", "nifti", "hdf5"
    _handles: tuple[str, ...] = ()

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None, slice_names: list[str] | None = None,
                 skipped: list[str] | None = None) -> None:
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        stem = volume_id(path)
        self.slice_names = slice_names or [f"{stem}_{z:04d}.tif" for z in range(self.shape[0])]
        self.skipped = skipped or []
        for name in self._handles:
            setattr(self, name, None)
        self._lock = threading.RLock()

    # Pickling (DataLoader workers, spawn processes) reopens the file on first use.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._handles:
            state[name] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        z, y, x = self.shape
        return f"Volume({str(self.path)!r}, {z}x{y}x{x}, {self.dtype})"

    @property
    def is_folder(self) -> bool:
        """Whether it is a folder of TIFF slices (whose outputs keep its slice names)."""
        return False

    def skipped_note(self) -> str | None:
        """One sentence about files in the folder that were not TIFF and were left out."""
        if not self.skipped:
            return None
        examples = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return (f"{len(self.skipped)} file(s) in {self.path} that are not TIFF slices were "
                f"skipped ({examples}).")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def close(self) -> None:
        """Close the open file handles (reopened on the next read)."""
        for name in self._handles:
            handle = getattr(self, name, None)
            setattr(self, name, None)
            if hasattr(handle, "close"):
                handle.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A volume left to the garbage collector closes its files with it.
        self.close()

    def _check_index(self, z: int) -> None:
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} is outside 0..{self.shape[0] - 1} of {self.path}")

    def _read(self, z0: int, z1: int) -> np.ndarray:
        """Slices z0..z1-1 (within the stack, z0 < z1) as a (z1 - z0, Y, X) array of `dtype`."""
        raise NotImplementedError

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read slice z as a (Y, X) array; `out`, if given, receives the pixels.

        The array may be read-only (a view of a slab the reader keeps): copy it to change it.
        """
        self._check_index(z)
        data = self._read(z, z + 1)[0]
        if out is None:
            return data
        out[...] = data
        return out

    def read_slab(self, z0: int, z1: int) -> np.ndarray:
        """Read slices z0..z1-1 as a (z1 - z0, Y, X) array."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        if z1 <= z0:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return self._read(z0, z1)

    def memmap_slice(self, z: int) -> np.ndarray | None:
        """Slice z as a read-only memory map when the file stores it raw, else None (read it)."""
        return None

    def iter_slices(self) -> Iterator[np.ndarray]:
        """Yield every slice in order."""
        for z in range(self.shape[0]):
            yield self.read_slice(z)



# ----------------------------------------------------------------------------------------------
# Readers


@dataclass(frozen=True)
class Reader:
    """How `open_volume` recognises and opens one format; each reader module registers one.

    Attributes:
        kind: the format ("tiff", "zarr", "nifti", "hdf5").
        open: opens a path of this format lazily (headers only); raises VolumeError.
        suffixes: the name endings (lower case) of what it reads.
        files: whether it reads files named with one of `suffixes`.
        folders: whether it reads folders named with one of `suffixes`.
        holds: whether a folder is of this format whatever its name, or None.
        any_folder: it reads every folder that no other reader claims (folders of TIFF slices).
        sources: the files whose sizes and modification times identify the contents of a
            volume of this format; None: the file itself.
    """

    kind: str
    open: Callable[[Path], Volume]
    suffixes: tuple[str, ...] = ()
    files: bool = True
    folders: bool = False
    holds: Callable[[Path], bool] | None = None
    any_folder: bool = False
    sources: Callable[[Path], list[Path]] | None = None


_READERS: dict[str, Reader] = {}
_READER_MODULES = ("bone_apps.core.io.tiff",)  # besides every module of core/io/formats/
_loaded = False


def register_reader(reader: Reader) -> None:
    """Make `open_volume` read the format `reader` describes (called by the reader's module)."""
    _READERS[reader.kind] = reader


def readers() -> list[Reader]:
    """Every registered reader; the reader modules are imported on first use (their format
    libraries only when a volume of theirs is opened)."""
    global _loaded
    if not _loaded:
        for name in _READER_MODULES:
            importlib.import_module(name)
        for module in pkgutil.iter_modules(formats.__path__):
            importlib.import_module(f"{formats.__name__}.{module.name}")
        _loaded = True
    return list(_READERS.values())


def reader_for(path: Path) -> Reader | None:
    """The reader of what `path` holds: by its name's suffix, else (a folder) by its contents."""
    name = formats.split_hdf5(path)[0].name.lower()
    folder = path.is_dir()
    found = readers()
    named = sorted(((len(s), r) for r in found for s in r.suffixes if name.endswith(s)),
                   key=lambda pair: -pair[0])
    for _, reader in named:
        if reader.folders if folder else reader.files:
            return reader
    if not folder:
        return None
    held = next((r for r in found if r.holds is not None and r.holds(path)), None)
    return held or next((r for r in found if r.any_folder), None)


# ----------------------------------------------------------------------------------------------
# Opening


def volumes_in(folder: str | os.PathLike) -> list[Path]:
    """The volumes of a folder (a dataset's scans/ or masks/), in natural order: sub-folders
    (TIFF slices, Zarr stores) and files of a volume format (TIFF, NIfTI, HDF5); hidden names
    are left out."""
    return [Path(entry.path) for entry in sorted(os.scandir(folder), key=lambda e: natural_key(e.name))
            if not entry.name.startswith(".") and (entry.is_dir() or formats.is_volume_name(entry.name))]


def open_volume(path: str | os.PathLike, role: str = "scan") -> Volume:
    """Open a scan or mask lazily, whatever its format (headers only).

    Args:
        path: a folder of 2D TIFF slices or one TIFF file; an OME-Zarr image (its level 0),
            one of its levels (`scan.ome.zarr/1`, see formats.at_level) or a plain Zarr
            array; a NIfTI file (.nii, .nii.gz); an HDF5 dataset `file.h5:/path/to/dataset`
            (or the file alone when it holds a single image dataset).
        role: "scan" or "mask"; decides which pixel types are accepted.

    Raises:
        VolumeError: the path is missing, empty, holds no volume, mixes shapes or types, is
            corrupt or truncated, RGB or multi-sample, holds channels or time points (4D), names
            a dataset or level that is not there, or is of an unsupported pixel type.
    """
    path = Path(path).expanduser()
    file, _ = formats.split_hdf5(path)
    if not file.exists():
        raise VolumeError(f"{file} does not exist: check the path.")
    reader = reader_for(path)
    if reader is None:
        raise VolumeError(f"{path} is not a volume bone_apps reads: choose a folder of TIFF slices, a "
                          "TIFF file, an OME-Zarr image (.ome.zarr), a NIfTI file (.nii, .nii.gz) or an "
                          "HDF5 dataset (file.h5:/path/to/dataset).")
    volume = reader.open(path)
    _check_dtype(volume, role)
    return volume


def source_files(path: str | os.PathLike) -> list[Path]:
    """The files whose sizes and modification times identify a volume's contents (the
    statistics cache's key): a TIFF folder's slices, every file of a Zarr image, else the file."""
    path = Path(path).expanduser()
    where = formats.location(path)
    if not where.is_dir():
        return [where]
    reader = reader_for(where)
    if reader is None or reader.sources is None:
        return [where]
    return reader.sources(path)


def _check_dtype(volume: Volume, role: str) -> None:
    allowed = MASK_DTYPES if role == "mask" else SCAN_DTYPES
    if volume.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise VolumeError(
            f"{volume.path} is {volume.dtype}, which a {role} cannot be: save it as {names}.")



# ----------------------------------------------------------------------------------------------
# Pairs


def check_same_shape(first: Volume, second: Volume, what: str = "mask", of: str = "scan") -> None:
    """Raise ShapeMismatchError unless two volumes have the same (Z, Y, X).

    `what` names the second volume and `of` the first in the advice ("choose the mask that
    belongs to this scan", "the prediction that belongs to this reference").
    """
    if first.shape != second.shape:
        fz, fy, fx = first.shape
        sz, sy, sx = second.shape
        raise ShapeMismatchError(
            f"{second.path} is {sz}x{sy}x{sx} (slices x height x width) but {first.path} is "
            f"{fz}x{fy}x{fx}: choose the {what} that belongs to this {of}.")
