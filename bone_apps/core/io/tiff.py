"""TIFF scans and masks: a folder of 2D TIFF slices or one multi-page / 3D TIFF file.

Plain, ImageJ hyperstack or OME-TIFF, BigTIFF or not, in strips or tiles, uncompressed or
compressed with any codec tifffile + imagecodecs decode. Opening reads headers only; reading a
slice or a z-range reads only those bytes, straight from the file when the pixels are stored
uncompressed. A file is refused rather than read in part: several series, pages of different
sizes, channels or time points, or a broken chain of pages. The reader registers itself with
core/io/volume.py (any folder that no other format claims is read as TIFF slices).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from bone_apps.core.errors import VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.outputs import MARKER
from bone_apps.core.io.volume import (
    Reader,
    Volume,
    VoxelSize,
    natural_key,
    register_reader,
    short_error,
    volume_id,
)

# Axes tifffile uses for the image plane and for the slices of a stack (Z; Q and I: unnamed).
_PLANE_AXES = ("Y", "X")
_DEPTH_AXES = ("Z", "Q", "I")
# What messages call the other axes of ImageJ hyperstacks and OME-TIFF (tifffile's letters).
_AXIS_NAMES = {
    "T": "time points", "C": "channels", "S": "samples per pixel", "E": "wavelengths",
    "P": "positions", "R": "tiles", "M": "mosaic tiles", "A": "angles", "H": "lifetime bins",
    "L": "exposures", "V": "phases",
}
_UNIT_TO_UM = {
    "um": 1.0, "micron": 1.0, "microns": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0,
}
_RESOLUTION_UNIT_TO_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # inch, cm, mm, um (TIFF + tifffile)


def _size(shape: Sequence[int]) -> str:
    """A shape as messages write it: '16x64x64' (numpy order: slices x height x width)."""
    return "x".join(str(int(s)) for s in shape)


@dataclass
class _SliceFile:
    """Where one 2D slice's pixels are: a whole file, or raw bytes at an offset."""

    path: Path
    offset: int | None  # byte offset of uncompressed contiguous pixels, else None


class TiffVolume(Volume):
    """A folder of TIFF slices or one multi-page TIFF (see the module's docstring)."""

    kind = "tiff"
    _handles = ("_tiff",)

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
        super().__init__(path, shape, dtype, voxel_size, slice_names, skipped)
        self._slice_files = slice_files  # None for a multi-page file
        self._stored_dtype = stored_dtype  # with the file's byte order
        self._series_offset = series_offset  # contiguous pixels of a multi-page file
        self._tiff: tifffile.TiffFile | None = None

    @property
    def is_folder(self) -> bool:
        return self._slice_files is not None

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read slice z as a (Y, X) array; `out`, if given, receives the pixels."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} is outside 0..{self.shape[0] - 1} of {self.path}")
        path, offset = self._raw_location(z)
        where = self._describe_slice(z)
        plane = self.shape[1] * self.shape[2]
        try:
            if offset is not None:
                data = np.fromfile(path, dtype=self._stored_dtype, count=plane, offset=offset)
                if data.size != plane:
                    raise VolumeError(f"{where} is cut short (the file is truncated): "
                                      "copy the file again or re-export it.")
                data = data.reshape(self.shape[1:])
            elif self._slice_files is not None:
                data = tifffile.imread(path, key=0)
            else:
                data = self._read_page(z)
        except VolumeError:
            raise
        except ImportError as exc:  # a codec tifffile needs is missing (imagecodecs)
            raise VolumeError(f"{where} is compressed in a way that needs the imagecodecs package "
                              f"({exc}): run 'pip install imagecodecs'.") from exc
        except (OSError, ValueError, IndexError, RuntimeError, tifffile.TiffFileError) as exc:
            # RuntimeError: imagecodecs' decoders (LZW, Deflate, JPEG, zstd) on damaged data.
            raise VolumeError(f"{where} cannot be decoded ({short_error(exc)}): the file is damaged or "
                              "truncated, so copy it again or re-export it.") from exc
        if data.shape != self.shape[1:]:
            raise VolumeError(f"{where} holds a {_size(data.shape)} image where "
                              f"{_size(self.shape[1:])} was expected: re-export the scan.")
        if out is None:
            return data.astype(self.dtype, copy=False)
        out[...] = data
        return out

    def _describe_slice(self, z: int) -> str:
        """How a message names slice z: its file in a folder, "slice N of FILE" (from 1) otherwise."""
        if self._slice_files is not None:
            return str(self._slice_files[z].path)
        return f"slice {z + 1} of {self.path}"

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
            series = next(s for s in self._tiff.series if not _is_thumbnail(s))
            return series.pages[z].asarray()

    def read_slab(self, z0: int, z1: int) -> np.ndarray:
        """Read slices z0..z1-1 as a (z1 - z0, Y, X) array."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        slab = np.empty((max(0, z1 - z0), *self.shape[1:]), dtype=self.dtype)
        for i, z in enumerate(range(z0, z1)):
            self.read_slice(z, out=slab[i])
        return slab


# ----------------------------------------------------------------------------------------------
# Opening


def open_tiff(path: Path) -> Volume:
    """Open a folder of TIFF slices or one TIFF file (headers only).

    Raises:
        VolumeError: see `volume.open_volume`.
    """
    return _open_folder(path) if path.is_dir() else _open_file(path)


def tiff_sources(path: Path) -> list[Path]:
    """The files a TIFF volume is read from: the slices of a folder, else the file."""
    return list_tiff_files(path)[0] if path.is_dir() else [path]


def list_tiff_files(folder: Path) -> tuple[list[Path], list[str]]:
    """TIFF files of a folder in natural order, and the names of other files skipped.

    Skipped (and named in the second list): files that are not TIFF, hidden files such as
    .DS_Store, macOS AppleDouble companions ('._slice.tif') and links to nothing that are
    not named like a TIFF. Sub-folders and the marker file bone_apps writes are left out silently.

    Raises:
        VolumeError: a link named like a TIFF slice points to a file that does not exist.
    """
    tiffs, skipped = [], []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):  # hidden, including AppleDouble '._*' files
            if entry.name != MARKER and not entry.is_dir():
                skipped.append(entry.name)
            continue
        if entry.is_symlink() and not os.path.exists(entry.path):
            if formats.is_tiff_name(entry.name):
                raise VolumeError(
                    f"{folder / entry.name} is a link to {os.readlink(entry.path)}, which does not "
                    "exist: copy the real slice into the folder or remove the link.")
            skipped.append(entry.name)
            continue
        if not entry.is_file():
            continue
        (tiffs if formats.is_tiff_name(entry.name) else skipped).append(entry.name)
    tiffs.sort(key=natural_key)
    return [folder / name for name in tiffs], sorted(skipped)



def _open_folder(folder: Path) -> Volume:
    files, skipped = list_tiff_files(folder)
    if not files:
        if skipped:
            raise VolumeError(f"{folder} holds no TIFF slices ({len(skipped)} other files): "
                              "choose the folder with the .tif slices.")
        raise VolumeError(f"{folder} is empty: choose the folder with the .tif slices.")
    infos = []
    for file in files:
        info = _header(file)
        if info["pages"] > 1:
            raise VolumeError(f"{file} holds {info['pages']} images, not one slice: keep one "
                              "slice per file, or open the multi-page file on its own.")
        infos.append(info)
    _check_slices_match(files, infos)
    first = infos[0]
    shape2d, dtype, byteorder = first["shape"], first["dtype"], first["byteorder"]
    slice_files = []
    for file, info in zip(files, infos):
        offset = info["offset"] if info["byteorder"] == byteorder else None
        slice_files.append(_SliceFile(file, offset))
    return TiffVolume(
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


def _check_slices_match(files: list[Path], infos: list[dict]) -> None:
    """Raise VolumeError naming a slice whose size or type differs from most of the others."""
    kinds = Counter((info["shape"], info["dtype"]) for info in infos)
    if len(kinds) == 1:
        return
    (shape2d, dtype), count = kinds.most_common(1)[0]
    odd = [(f, i) for f, i in zip(files, infos) if (i["shape"], i["dtype"]) != (shape2d, dtype)]
    file, info = odd[0]
    more = f" (and {len(odd) - 1} more file(s))" if len(odd) > 1 else ""
    raise VolumeError(
        f"{file} is {_size(info['shape'])} {info['dtype']}{more} but {count} of the {len(files)} "
        f"slices are {_size(shape2d)} {dtype} (height x width): the folder mixes slices of "
        "different scans; keep one scan per folder.")


def _header(file: Path) -> dict:
    """Shape, type, storage and voxel size of a single-slice TIFF, from its header."""
    try:
        with _tifffile_errors() as damage, tifffile.TiffFile(file) as tif:
            series, depth, _ = _main_series(file, tif, damage)
            page = series.pages[0]
            offset = int(page.dataoffsets[0]) if page.is_memmappable and page.dataoffsets else None
            return {
                "shape": tuple(int(s) for s in _plane_shape(file, series)),
                "dtype": np.dtype(page.dtype).newbyteorder("="),
                "byteorder": tif.byteorder,
                "offset": offset,
                "pages": depth,
                "voxel_size": _voxel_size(tif),
            }
    except (OSError, ValueError, IndexError, RuntimeError, tifffile.TiffFileError) as exc:
        if isinstance(exc, VolumeError):
            raise
        raise VolumeError(
            f"{file} is not a readable TIFF ({short_error(exc)}): re-export it or remove it.") from exc


# Messages tifffile logs (instead of raising) when the chain of pages in a file is broken.
_DAMAGE_LOGS = ("invalid page offset", "invalid offset to page", "corrupted tag list",
                "circular reference", "failed to reshape")


class _DamageLog(logging.Handler):
    """Collects this thread's tifffile log lines that say a file is truncated or damaged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.thread == self.thread and any(key in message for key in _DAMAGE_LOGS):
            self.messages.append(message.split("> ", 1)[-1])


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Within the block, the list fills with tifffile's complaints about a damaged page chain."""
    log = logging.getLogger("tifffile")
    handler = _DamageLog()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


def _is_thumbnail(series: tifffile.TiffPageSeries) -> bool:
    """Whether a series holds only reduced-resolution copies (previews, not data)."""
    return bool(getattr(series.keyframe, "is_reduced", False))  # NewSubfileType bit 0


def _main_series(file: Path, tif: tifffile.TiffFile,
                 damage: list[str]) -> tuple[tifffile.TiffPageSeries, int, tuple[int, int]]:
    """The one image series of a file, its number of slices and its (Y, X).

    Reduced-resolution images (thumbnails, pyramid levels) are ignored; any other second
    series, pages no series accounts for, or a broken page chain is refused rather than
    read in part.
    """
    pages = len(tif.pages)  # walks the whole page chain, so a truncated file shows here
    if damage:
        raise VolumeError(f"{file} is truncated or damaged after page {pages} ({short_error(damage[0])}): "
                          "copy the file again or re-export it.")
    found = [s for s in tif.series if not _is_thumbnail(s)]
    if not found:
        raise VolumeError(f"{file} is not a readable TIFF (no image found in it): re-export it.")
    if len(found) > 1:
        if all(s.kind == "generic" for s in found):
            kinds = ", ".join(f"{len(s.pages)} of {_size(s.shape[-2:])} {s.dtype}" for s in found)
            raise VolumeError(f"{file} mixes pages of different sizes or types ({kinds}): export the "
                              "slices of one scan as their own file.")
        kinds = " and ".join(f"{_size(s.shape)} {s.dtype}" for s in found)
        raise VolumeError(f"{file} holds {len(found)} series ({kinds}): export the one to use as "
                          "its own file.")
    series = found[0]
    # Pages the series' shapes account for (tifffile's page lists may hold more than they use).
    in_series = sum(s.size // max(1, s.keyframe.size) for s in tif.series)
    if in_series < pages:
        kind = {"imagej": "ImageJ", "ome": "OME", "shaped": "tifffile"}.get(series.kind, series.kind)
        raise VolumeError(f"{file} has {pages} pages but its {kind} metadata describes only "
                          f"{in_series}: re-export it as a plain stack.")
    plane = _plane_shape(file, series)
    depth = math.prod(int(s) for a, s in zip(series.axes, series.shape) if a not in _PLANE_AXES)
    return series, depth, plane


def _plane_shape(file: Path, series: tifffile.TiffPageSeries) -> tuple[int, int]:
    """(Y, X) of a series after checking that every other axis is a depth axis (Z)."""
    extra = {a: int(s) for a, s in zip(series.axes, series.shape)
             if a not in _PLANE_AXES + _DEPTH_AXES and s > 1}
    if "S" in extra or ("C" in extra and series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB):
        samples = extra.get("S", extra.get("C"))
        colour = " (RGB colour)" if series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB else ""
        raise VolumeError(
            f"{file} has {samples} samples per pixel{colour}: micro-CT scans and masks are "
            "single-channel, so export it as 8- or 16-bit greyscale.")
    if extra:
        found = " and ".join(f"{size} {_AXIS_NAMES.get(axis, 'entries along axis ' + axis)} ({axis})"
                             for axis, size in extra.items())
        raise VolumeError(
            f"{file} is a hyperstack with {found} (axes {series.axes}, {_size(series.shape)}): "
            "export one channel at one time point as a Z stack (Fiji: Image > Duplicate), or, if "
            "these are really the slices, make them slices with Image > Hyperstacks > Re-order Hyperstacks.")
    plane_axes = [i for i, a in enumerate(series.axes) if a in _PLANE_AXES]
    if len(plane_axes) != 2:
        raise VolumeError(f"{file} has axes {series.axes}, not an image stack: "
                          "export it as a stack of 2D greyscale slices.")
    y, x = (int(series.shape[i]) for i in plane_axes)
    return y, x


def _open_file(file: Path) -> Volume:
    try:
        with _tifffile_errors() as damage, tifffile.TiffFile(file) as tif:
            series, depth, (y, x) = _main_series(file, tif, damage)
            dtype = np.dtype(series.dtype)
            offset = series.dataoffset
            if offset is not None and series.pages[0] is not None and series.pages[0].compression != 1:
                offset = None
            stem = volume_id(file)  # the scan's name, as its outputs are named
            return TiffVolume(
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
    except (OSError, ValueError, IndexError, RuntimeError, tifffile.TiffFileError) as exc:
        if isinstance(exc, VolumeError):
            raise
        raise VolumeError(f"{file} is not a readable TIFF ({short_error(exc)}): re-export it.") from exc


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


# Any folder no other format claims is a folder of TIFF slices.
register_reader(Reader(kind="tiff", open=open_tiff, suffixes=formats.TIFF_FILE_SUFFIXES, folders=False,
                       any_folder=True, sources=tiff_sources))
