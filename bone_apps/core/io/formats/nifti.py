"""NIfTI-1 and NIfTI-2 files (.nii, .nii.gz): reading them as volumes, and writing NIfTI outputs.

Axes: the file's voxel axes (i, j, k) are read as (X, Y, Z): a slice is a k-plane, the third
axis, as ITK, SimpleITK (whose arrays are (k, j, i)), 3D Slicer and ITK-SNAP show them. Nothing
is resampled or reoriented: bone_apps works in the file's voxel order, so a model sees the same
slices as in a TIFF export of the scan, and the scan's header (qform and sform with their
codes, units, pixdim) is copied unchanged into every NIfTI output, which therefore lies
exactly on the scan in any viewer.

Voxel size: pixdim in the file's units, millimetres when it names none (NIfTI's convention).

Reading: a k-plane is contiguous in the file, so slices are read straight from their offset
(.nii, which can also be memory-mapped) or by reading on through the gzip stream (.nii.gz:
fast in order, slow backwards, so prefer .nii where slices are read at random, as when fitting
on large scans). Scaled data (scl_slope, scl_inter) is read as float32.

Writing: nibabel makes the header; the voxels follow it slice by slice as they arrive (nibabel
writes whole arrays only). The proof that bone_apps wrote a file, which `--overwrite` checks,
is a NIfTI comment extension holding {"written_by": "bone_apps ..."}.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import numpy as np

from bone_apps.core.errors import VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.volume import Reader, SourceFormat, Volume, VoxelSize, register_reader, short_error

_UNIT_TO_UM = {"meter": 1e6, "mm": 1e3, "micron": 1.0}
_COMMENT = 6  # NIfTI extension code of a free-text comment
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


class NiftiVolume(Volume):
    """A NIfTI file read as (Z, Y, X) = (k, j, i), straight from its bytes."""

    kind = "nifti"
    _handles = ("_file",)

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None, stored_dtype: np.dtype, offset: int,
                 scaling: tuple[float, float] | None) -> None:
        super().__init__(path, shape, dtype, voxel_size)
        self._stored_dtype = stored_dtype  # with the file's byte order
        self._offset = offset
        self._scaling = scaling  # (slope, intercept), None when the values are stored as they are

    def _read(self, z0: int, z1: int) -> np.ndarray:
        plane = self.shape[1] * self.shape[2]
        count = (z1 - z0) * plane
        start = self._offset + z0 * plane * self._stored_dtype.itemsize
        try:
            if not _is_gzip(self.path):
                array = np.fromfile(self.path, dtype=self._stored_dtype, count=count, offset=start)
            else:
                # One stream kept open: reading slices in order never decompresses one twice.
                with self._lock:
                    if self._file is None:
                        self._file = gzip.open(self.path, "rb")
                    self._file.seek(start)
                    data = self._file.read(count * self._stored_dtype.itemsize)
                array = np.frombuffer(data[: len(data) - len(data) % self._stored_dtype.itemsize],
                                      dtype=self._stored_dtype)
        except _READ_ERRORS as exc:
            raise VolumeError(f"slice {z0 + 1} of {self.path} cannot be read ({short_error(exc)}): "
                              "the file is "
                              "damaged, so copy it again or re-export it.") from exc
        if array.size != count:
            raise VolumeError(f"slice {z0 + 1 + array.size // plane} of {self.path} is cut short (the file "
                              "is truncated): copy the file again or re-export it.")
        array = array.reshape(z1 - z0, *self.shape[1:])
        if self._scaling is not None:
            slope, intercept = self._scaling
            return (array * np.float32(slope) + np.float32(intercept)).astype(np.float32)
        return array.astype(self.dtype)  # native byte order, and writable (frombuffer's is not)

    def memmap_slice(self, z: int) -> np.ndarray | None:
        """Slice z as a read-only memory map (.nii holding values as they are), else None."""
        if _is_gzip(self.path) or self._scaling is not None:
            return None
        offset = self._offset + z * self.shape[1] * self.shape[2] * self._stored_dtype.itemsize
        try:
            mapped = np.memmap(self.path, dtype=self._stored_dtype, mode="r", offset=offset,
                               shape=self.shape[1:])
        except (OSError, ValueError) as exc:
            raise VolumeError(f"{self.path} could not be read ({short_error(exc)}): check the file or "
                              "re-export it.") from exc
        return mapped.view(np.ndarray)


def _load(path: Path):
    """The file as a nibabel image (header and extensions read, voxels not), or VolumeError."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except (*_READ_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise VolumeError(f"{path} is not a readable NIfTI file ({short_error(exc)}): re-export it.") from exc
    if not isinstance(image.header, nib.Nifti1Header):  # NIfTI-2 headers are Nifti1Header's kind too
        raise VolumeError(f"{path} is not a NIfTI file but {type(image).__name__}: save it as NIfTI.")
    return image


def open_nifti(path: Path) -> NiftiVolume:
    """Open a .nii or .nii.gz file (its header only).

    Raises:
        VolumeError: unreadable, 4D (time points or channels), RGB or complex voxels.
    """
    image = _load(path)
    header, proxy = image.header, image.dataobj  # the proxy knows the file's offset and scaling
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        raise VolumeError(
            f"{path} holds {len(shape)}D data ({'x'.join(map(str, shape))}, i x j x k x t...): "
            "bone_apps reads one 3D volume, so save one time point or channel as its own file.")
    nx, ny, nz = (*shape[:3], 1, 1, 1)[:3]
    stored = np.dtype(proxy.dtype)
    if stored.fields is not None or stored.kind not in "uif":
        raise VolumeError(f"{path} holds {stored} voxels (RGB or complex): micro-CT scans and masks "
                          "are greyscale, so save it as 8- or 16-bit greyscale.")
    if getattr(proxy, "order", "F") != "F":
        raise VolumeError(f"{path} stores its voxels in an order NIfTI does not use: re-export it.")
    slope, intercept = float(proxy.slope), float(proxy.inter)
    scaled = slope != 1.0 or intercept != 0.0
    scaling = (slope, intercept) if scaled else None
    dtype = np.dtype(np.float32) if scaled else stored.newbyteorder("=")
    zooms = [float(v) for v in (*header.get_zooms()[:3], 1.0, 1.0, 1.0)[:3]]
    unit = _UNIT_TO_UM.get(header.get_xyzt_units()[0], 1e3)
    voxel = None
    if all(v > 0 for v in zooms):
        voxel = VoxelSize.with_source(zooms[2] * unit, zooms[1] * unit, zooms[0] * unit,
                                      SourceFormat("nifti", bytes(header.binaryblock)))
    return NiftiVolume(path, (nz, ny, nx), dtype, voxel, stored, int(proxy.offset), scaling)


def is_ours(path: Path) -> bool:
    """Whether bone_apps wrote this NIfTI file (its comment extension says so)."""
    from bone_apps.core.io.outputs import is_written_by_us

    try:
        image = _load(path)
    except VolumeError:
        return False
    for extension in image.header.extensions:
        if extension.get_code() != _COMMENT:
            continue
        content = extension.get_content()
        try:
            data = json.loads(content.decode() if isinstance(content, bytes) else content)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and is_written_by_us(data.get("written_by")):
            return True
    return False


class NiftiSink:
    """Writes a (Z, Y, X) volume as a NIfTI file into `partial`, slice by slice.

    The header is the scan's own when the voxel size came from a NIfTI scan (same affine,
    codes and units), else a new one whose affine scales by the voxel size in millimetres.
    """

    def __init__(self, partial: Path, target: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None) -> None:
        import nibabel as nib

        from bone_apps.core.io.outputs import WRITTEN_BY

        header = self._header(shape, dtype, voxel_size)
        header.extensions.append(nib.nifti1.Nifti1Extension(
            "comment", json.dumps({"written_by": WRITTEN_BY}).encode()))
        self._stored_dtype = header.get_data_dtype()
        raw = open(partial, "wb")
        # No file name and time in the gzip header: reruns give identical bytes.
        self._file = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) \
            if _is_gzip(target) else raw
        self._raw = raw
        header.write_to(self._file)  # sets vox_offset past the extensions (it was 0)
        self._file.write(b"\0" * max(0, header.get_data_offset() - self._file.tell()))

    @staticmethod
    def _header(shape: tuple[int, int, int], dtype: np.dtype, voxel_size: VoxelSize | None):
        import nibabel as nib

        nz, ny, nx = shape
        source = voxel_size.source if voxel_size is not None else None
        if source is not None and source.kind == "nifti":
            block = bytes(source.details)
            klass = nib.Nifti2Header if len(block) == nib.Nifti2Header.sizeof_hdr else nib.Nifti1Header
            header = klass.from_fileobj(io.BytesIO(block))
        else:
            header = nib.Nifti1Header()
            zooms = (1.0, 1.0, 1.0) if voxel_size is None else (
                voxel_size.x / 1e3, voxel_size.y / 1e3, voxel_size.z / 1e3)
            affine = np.diag([*zooms, 1.0])
            header.set_sform(affine, code="aligned")
            header.set_qform(affine, code="aligned")
            header.set_xyzt_units("mm" if voxel_size is not None else "unknown")
        header.set_data_dtype(np.dtype(dtype))
        header.set_data_shape((nx, ny, nz))
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = 0, 0
        header["vox_offset"] = 0  # write_to places the voxels after whatever extensions there are
        return header

    def write(self, z: int, slice_: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(slice_, dtype=self._stored_dtype).tobytes())

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._file, self._raw):
            handle.close()


register_reader(Reader(kind="nifti", open=open_nifti, suffixes=formats.NIFTI_SUFFIXES))
