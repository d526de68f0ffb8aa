"""Scans and masks on disk: lazy reading of TIFF stacks and a streaming, atomic writer.

A volume is either a folder of 2D TIFF slices or one multi-page / 3D TIFF file (plain,
ImageJ hyperstack or OME-TIFF). Opening reads headers only; reading a slice or a z-range
reads only those bytes, straight from the file when the pixels are stored uncompressed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from bone_apps.core.errors import ShapeMismatchError, VolumeError

TIFF_SUFFIXES = (".tif", ".tiff")
SCAN_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))
MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
# Axes tifffile uses for the image plane and for samples (colour channels) of one pixel.
_PLANE_AXES = ("Y", "X")
_CHANNEL_AXES = ("S", "C")
_UNIT_TO_UM = {
    "um": 1.0, "micron": 1.0, "microns": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0,
}
_RESOLUTION_UNIT_TO_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # inch, cm, mm, um (TIFF + tifffile)


@dataclass(frozen=True)
class VoxelSize:
    """Edge lengths of one voxel in micrometres, (z, y, x) order."""

    z: float
    y: float
    x: float

    def __str__(self) -> str:
        if self.z == self.y == self.x:
            return f"{self.x:g} um"
        return f"{self.z:g} x {self.y:g} x {self.x:g} um (z, y, x)"


def natural_key(name: str) -> list:
    """Sort key that orders 's_2.tif' before 's_10.tif'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


@dataclass
class _SliceFile:
    """Where one 2D slice's pixels are: a whole file, or raw bytes at an offset."""

    path: Path
    offset: int | None  # byte offset of uncompressed contiguous pixels, else None


class Volume:
    """A lazily read 3D stack of shape (Z, Y, X).

    Attributes:
        path: the folder or file it was opened from.
        shape: (Z, Y, X).
        dtype: pixel type (native byte order).
        voxel_size: micrometres per voxel, or None when the files do not say.
        slice_names: one file name per slice (synthesised for a multi-page file).
        skipped: names of files in the folder that were not TIFF and were ignored.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        dtype: np.dtype,
        voxel_size: VoxelSize | None,
        slice_names: list[str],
        skipped: list[str],
        slice_files: list[_SliceFile] | None,
        stored_dtype: np.dtype,
        series_offset: int | None,
    ) -> None:
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.voxel_size = voxel_size
        self.slice_names = slice_names
        self.skipped = skipped
        self._slice_files = slice_files  # None for a multi-page file
        self._stored_dtype = stored_dtype  # with the file's byte order
        self._series_offset = series_offset  # contiguous pixels of a multi-page file
        self._tiff: tifffile.TiffFile | None = None
        self._lock = threading.Lock()

    # Pickling (DataLoader workers, spawn processes) reopens the file on first use.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tiff"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        z, y, x = self.shape
        return f"Volume({str(self.path)!r}, {z}x{y}x{x}, {self.dtype})"

    @property
    def is_folder(self) -> bool:
        return self._slice_files is not None

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
        """Close the open file handle of a multi-page volume (reopened on next read)."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read slice z as a (Y, X) array; `out`, if given, receives the pixels."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} is outside 0..{self.shape[0] - 1} of {self.path}")
        path, offset = self._raw_location(z)
        plane = self.shape[1] * self.shape[2]
        try:
            if offset is not None:
                data = np.fromfile(path, dtype=self._stored_dtype, count=plane, offset=offset)
                if data.size != plane:
                    raise VolumeError(f"{path} is truncated: re-export or copy the file again.")
                data = data.reshape(self.shape[1:])
            elif self._slice_files is not None:
                data = tifffile.imread(path, key=0)
            else:
                data = self._read_page(z)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            if isinstance(exc, VolumeError):
                raise
            raise VolumeError(f"{path} could not be read ({exc}): check the file or re-export it.") from exc
        if data.shape != self.shape[1:]:
            raise VolumeError(f"{path} holds a {data.shape} image where {self.shape[1:]} was expected.")
        if out is None:
            return data.astype(self.dtype, copy=False)
        out[...] = data
        return out

    def _raw_location(self, z: int) -> tuple[Path, int | None]:
        """The file holding slice z and the byte offset of its raw pixels (None if compressed)."""
        if self._slice_files is not None:
            return self._slice_files[z].path, self._slice_files[z].offset
        if self._series_offset is None:
            return self.path, None
        plane_bytes = self.shape[1] * self.shape[2] * self._stored_dtype.itemsize
        return self.path, self._series_offset + z * plane_bytes

    def memmap_slice(self, z: int) -> np.ndarray | None:
        """Slice z as a read-only memory map (file byte order) when stored uncompressed, else None.

        Cropping a patch from a map reads only the pages the patch touches; the map costs
        address space, not RAM.
        """
        path, offset = self._raw_location(z)
        if offset is None:
            return None
        try:
            mapped = np.memmap(path, dtype=self._stored_dtype, mode="r", offset=offset,
                               shape=self.shape[1:])
        except (OSError, ValueError) as exc:
            raise VolumeError(f"{path} could not be read ({exc}): check the file or re-export it.") from exc
        return mapped.view(np.ndarray)  # plain array views slice faster; the map stays alive

    def _read_page(self, z: int) -> np.ndarray:
        with self._lock:
            if self._tiff is None:
                self._tiff = tifffile.TiffFile(self.path)
            series = self._tiff.series[0]
            return series.pages[z].asarray()

    def read_slab(self, z0: int, z1: int) -> np.ndarray:
        """Read slices z0..z1-1 as a (z1 - z0, Y, X) array."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        slab = np.empty((max(0, z1 - z0), *self.shape[1:]), dtype=self.dtype)
        for i, z in enumerate(range(z0, z1)):
            self.read_slice(z, out=slab[i])
        return slab

    def iter_slices(self) -> Iterator[np.ndarray]:
        """Yield every slice in order."""
        for z in range(self.shape[0]):
            yield self.read_slice(z)


# ----------------------------------------------------------------------------------------------
# Opening


def list_tiff_files(folder: Path) -> tuple[list[Path], list[str]]:
    """TIFF files of a folder in natural order, and the names of other files skipped."""
    tiffs, skipped = [], []
    for entry in os.scandir(folder):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        (tiffs if _is_tiff(Path(entry.name)) else skipped).append(entry.name)
    tiffs.sort(key=natural_key)
    return [folder / name for name in tiffs], sorted(skipped)


def open_volume(path: str | os.PathLike, role: str = "scan") -> Volume:
    """Open a folder of TIFF slices or a multi-page TIFF lazily.

    Args:
        path: folder of 2D TIFF slices or one TIFF file.
        role: "scan" or "mask"; decides which pixel types are accepted.

    Raises:
        VolumeError: the path is missing, empty, holds no TIFF, mixes shapes or types, is
            corrupt, RGB, or of an unsupported pixel type.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"{path} does not exist: check the path.")
    if path.is_dir():
        volume = _open_folder(path)
    elif _is_tiff(path):
        volume = _open_file(path)
    else:
        raise VolumeError(f"{path} is not a TIFF file or a folder of TIFF slices: choose one of those.")
    _check_dtype(volume, role)
    return volume


def _check_dtype(volume: Volume, role: str) -> None:
    allowed = MASK_DTYPES if role == "mask" else SCAN_DTYPES
    if volume.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise VolumeError(
            f"{volume.path} is {volume.dtype}, which a {role} cannot be: save it as {names}.")


def _open_folder(folder: Path) -> Volume:
    files, skipped = list_tiff_files(folder)
    if not files:
        if skipped:
            raise VolumeError(f"{folder} holds no TIFF slices ({len(skipped)} other files): "
                              "choose the folder with the .tif slices.")
        raise VolumeError(f"{folder} is empty: choose the folder with the .tif slices.")
    first = _header(files[0])
    shape2d, dtype, byteorder = first["shape"], first["dtype"], first["byteorder"]
    slice_files = []
    for file in files:
        info = first if file is files[0] else _header(file)
        if info["pages"] > 1:
            raise VolumeError(f"{file} holds {info['pages']} images, not one slice: keep one "
                              "slice per file, or open the multi-page file on its own.")
        if info["shape"] != shape2d or info["dtype"] != dtype:
            raise VolumeError(
                f"{file} is {info['shape'][1]}x{info['shape'][0]} {info['dtype']} but {files[0].name} "
                f"is {shape2d[1]}x{shape2d[0]} {dtype}: the folder mixes slices of different scans; "
                "keep one scan per folder.")
        offset = info["offset"] if info["byteorder"] == byteorder else None
        slice_files.append(_SliceFile(file, offset))
    return Volume(
        path=folder,
        shape=(len(files), *shape2d),
        dtype=dtype,
        voxel_size=first["voxel_size"],
        slice_names=[f.name for f in files],
        skipped=skipped,
        slice_files=slice_files,
        stored_dtype=dtype.newbyteorder(byteorder),
        series_offset=None,
    )


def _header(file: Path) -> dict:
    """Shape, type, storage and voxel size of a single-slice TIFF, from its header."""
    try:
        with tifffile.TiffFile(file) as tif:
            page = tif.pages.first
            series = tif.series[0]
            _reject_channels(file, series.axes, series.shape)
            shape = tuple(int(s) for s in page.shape if s != 1) if page.ndim > 2 else page.shape
            offset = int(page.dataoffsets[0]) if page.is_memmappable and page.dataoffsets else None
            return {
                "shape": tuple(int(s) for s in shape[-2:]),
                "dtype": np.dtype(page.dtype).newbyteorder("="),
                "byteorder": tif.byteorder,
                "offset": offset,
                "pages": len(tif.pages),
                "voxel_size": _voxel_size(tif),
            }
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        if isinstance(exc, VolumeError):
            raise
        raise VolumeError(f"{file} is not a readable TIFF ({exc}): re-export it or remove it.") from exc


def _reject_channels(file: Path, axes: str, shape: Sequence[int]) -> None:
    for axis, size in zip(axes, shape):
        if axis in _CHANNEL_AXES and size > 1:
            raise VolumeError(
                f"{file} has {size} colour channels (RGB): micro-CT scans and masks are "
                "single-channel, so export it as 8- or 16-bit greyscale.")


def _open_file(file: Path) -> Volume:
    try:
        with tifffile.TiffFile(file) as tif:
            series = tif.series[0]
            _reject_channels(file, series.axes, series.shape)
            plane_axes = [i for i, a in enumerate(series.axes) if a in _PLANE_AXES]
            if len(plane_axes) != 2:
                raise VolumeError(f"{file} has axes {series.axes}, not an image stack: "
                                  "export it as a stack of 2D greyscale slices.")
            y, x = (int(series.shape[i]) for i in plane_axes)
            depth = math.prod(int(s) for a, s in zip(series.axes, series.shape)
                              if a not in _PLANE_AXES + _CHANNEL_AXES)
            dtype = np.dtype(series.dtype)
            offset = series.dataoffset
            if offset is not None and series.pages[0] is not None and series.pages[0].compression != 1:
                offset = None
            stem = file.name.split(".")[0]
            return Volume(
                path=file,
                shape=(depth, y, x),
                dtype=dtype.newbyteorder("="),
                voxel_size=_voxel_size(tif),
                slice_names=[f"{stem}_{z:04d}.tif" for z in range(depth)],
                skipped=[],
                slice_files=None,
                stored_dtype=dtype.newbyteorder(tif.byteorder),
                series_offset=None if offset is None else int(offset),
            )
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        if isinstance(exc, VolumeError):
            raise
        raise VolumeError(f"{file} is not a readable TIFF ({exc}): re-export it.") from exc


# ----------------------------------------------------------------------------------------------
# Voxel size


def _to_um(value: float, unit: str | None) -> float | None:
    if unit is None:
        return None
    scale = _UNIT_TO_UM.get(unit.strip().lower().replace("\\u00b5", "\u00b5"))
    return None if scale is None else float(value) * scale


def _pixel_size(tif: tifffile.TiffFile, unit_um: float | None) -> tuple[float, float] | None:
    """(y, x) pixel size from the resolution tags, scaled by `unit_um` micrometres per unit."""
    tags = tif.pages.first.tags
    if unit_um is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if not (xn and yn and xd and yd):
        return None
    return yd / yn * unit_um, xd / xn * unit_um


def _voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    """Voxel size from OME, ImageJ or shaped metadata, else from the TIFF resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        size = _ome_voxel_size(tif.ome_metadata)
        if size is not None:
            return size
    meta = tif.imagej_metadata or (tif.shaped_metadata[0] if tif.shaped_metadata else None) or {}
    unit = meta.get("unit")
    if unit is not None:
        unit_um = _to_um(1.0, unit)
    else:
        tag = tif.pages.first.tags.get("ResolutionUnit")
        unit_um = _RESOLUTION_UNIT_TO_UM.get(int(tag.value)) if tag is not None else None
    plane = _pixel_size(tif, unit_um)
    if plane is None:
        return None
    spacing = meta.get("spacing")
    # Micro-CT reconstructions are isotropic unless the file says otherwise.
    z = plane[1] if spacing is None else float(spacing) * (unit_um or 1.0)
    return VoxelSize(z=z, y=plane[0], x=plane[1])


def _ome_voxel_size(xml: str) -> VoxelSize | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None

    def size(axis: str, fallback: float | None) -> float | None:
        if f"PhysicalSize{axis}" not in pixels.attrib:
            return fallback
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "um")
        return _to_um(float(pixels.attrib[f"PhysicalSize{axis}"]), unit)

    x = size("X", None)
    y = size("Y", x)
    z = size("Z", x)
    if x is None or y is None or z is None:
        return None
    return VoxelSize(z=z, y=y, x=x)


# ----------------------------------------------------------------------------------------------
# Pairs


def check_same_shape(first: Volume, second: Volume, what: str = "mask") -> None:
    """Raise ShapeMismatchError unless two volumes have the same (Z, Y, X)."""
    if first.shape != second.shape:
        fz, fy, fx = first.shape
        sz, sy, sx = second.shape
        raise ShapeMismatchError(
            f"{second.path} is {sz}x{sy}x{sx} (slices x height x width) but {first.path} is "
            f"{fz}x{fy}x{fx}: choose the {what} that belongs to this scan.")


# ----------------------------------------------------------------------------------------------
# Writing


def _partial_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


class VolumeWriter:
    """Stream a label or image volume to disk slice by slice, atomically.

    Slices are written in order into a hidden temporary sibling of `target`; `commit()` (or
    leaving the `with` block without an error) renames it to `target`. On an error or
    `abort()`, the temporary output is removed and `target` is untouched.

    Args:
        target: a folder (written as one TIFF per slice) or a path ending in .tif/.tiff
            (written as one multi-page TIFF, BigTIFF when larger than 4 GB).
        shape: (Z, Y, X) of the volume.
        dtype: pixel type to store.
        slice_names: file names of the slices (a folder target only); `slice_0000.tif`... if None.
        voxel_size: stored in the files' resolution and ImageJ metadata.
        overwrite: replace an existing target; otherwise an existing target is an error.
        compression: tifffile compression name (e.g. "zlib"), or None for uncompressed.
    """

    def __init__(
        self,
        target: str | os.PathLike,
        shape: tuple[int, int, int],
        dtype: np.dtype | type,
        slice_names: Sequence[str] | None = None,
        voxel_size: VoxelSize | None = None,
        overwrite: bool = False,
        compression: str | None = None,
    ) -> None:
        from bone_apps.core.errors import OutputExistsError

        self.target = Path(target).expanduser()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        self.overwrite = overwrite
        self.compression = compression
        self.multipage = _is_tiff(self.target)
        if self.target.exists() and not overwrite:
            raise OutputExistsError(
                f"{self.target} already exists: choose another output or allow overwriting.")
        if not self.target.parent.exists():
            raise VolumeError(f"{self.target.parent} does not exist: create it or choose another output.")
        if slice_names is not None and len(slice_names) != self.shape[0]:
            raise ValueError(f"{len(slice_names)} slice names for {self.shape[0]} slices")
        self.slice_names = list(slice_names) if slice_names else [
            f"slice_{z:04d}.tif" for z in range(self.shape[0])]
        self.partial = _partial_name(self.target)
        self._remove(self.partial)
        self.written = 0
        self._writer: tifffile.TiffWriter | None = None
        if self.multipage:
            bigtiff = math.prod(self.shape) * self.dtype.itemsize > 2**32 - 2**25
            self._writer = tifffile.TiffWriter(self.partial, bigtiff=bigtiff)
        else:
            self.partial.mkdir()

    def _tiff_kwargs(self) -> dict:
        kwargs: dict = {"compression": self.compression, "photometric": "minisblack"}
        if self.voxel_size is not None:
            vs = self.voxel_size
            # Resolution in pixels per centimetre: the unit every TIFF reader knows.
            kwargs["resolution"] = (1e4 / vs.x, 1e4 / vs.y)
            kwargs["resolutionunit"] = "CENTIMETER"
        return kwargs

    def write(self, slice_: np.ndarray) -> None:
        """Append the next (Y, X) slice."""
        if self.written >= self.shape[0]:
            raise ValueError(f"all {self.shape[0]} slices of {self.target} are already written")
        if slice_.shape != self.shape[1:]:
            raise ValueError(f"slice of shape {slice_.shape}; expected {self.shape[1:]}")
        data = np.ascontiguousarray(slice_, dtype=self.dtype)
        kwargs = self._tiff_kwargs()
        meta = None
        if self.voxel_size is not None:
            meta = {"spacing": self.voxel_size.z / 1e4, "unit": "cm"}
        if self._writer is not None:
            shaped = {"shape": list(self.shape)}
            if meta:
                shaped.update(meta)
            self._writer.write(data, contiguous=True, metadata=shaped, **kwargs)
        else:
            tifffile.imwrite(self.partial / self.slice_names[self.written], data,
                             metadata=meta, **kwargs)
        self.written += 1

    def commit(self) -> Path:
        """Finish and move the output to its final name; returns that name."""
        if self.written != self.shape[0]:
            raise VolumeError(f"only {self.written} of {self.shape[0]} slices of {self.target} "
                              "were written; the output was not saved.")
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.target.exists():
            if not self.overwrite:
                from bone_apps.core.errors import OutputExistsError

                raise OutputExistsError(f"{self.target} appeared while writing: choose another output.")
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.partial, self.target)
            self._remove(old)
        else:
            os.replace(self.partial, self.target)
        return self.target

    def abort(self) -> None:
        """Remove the temporary output; the target is left as it was."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._remove(self.partial)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_volume(
    target: str | os.PathLike,
    data: np.ndarray,
    slice_names: Sequence[str] | None = None,
    voxel_size: VoxelSize | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a whole (Z, Y, X) array; for small volumes (tests, sample scans)."""
    with VolumeWriter(target, data.shape, data.dtype, slice_names, voxel_size, overwrite) as writer:
        for slice_ in data:
            writer.write(slice_)
    return writer.target
