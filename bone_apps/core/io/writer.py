"""Streaming, atomic writing of label and image volumes, in every format bone_apps reads.

Slices go into a hidden temporary sibling of the target and are renamed into place only when
the last one is in, so an interrupted write never leaves a half-written output. The target's
name says its format (core/formats): a folder of TIFF slices, a multi-page .tif, an OME-Zarr
image (.ome.zarr / .zarr, or IMAGE.ome.zarr/labels/NAME for a labels group member), a NIfTI
file (.nii, .nii.gz) or an HDF5 file (.h5, .hdf5; `file.h5:/dataset` names the dataset).
TIFF is written here; the other formats' writers live in core/io/formats/.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from bone_apps.core.errors import ForeignFilesError, OutputExistsError, VolumeError
from bone_apps.core.io import formats, outputs
from bone_apps.core.io.volume import VoxelSize


def _partial_name(target: Path) -> Path:
    return outputs.partial_name(target)


class VolumeWriter:
    """Stream a label or image volume to disk slice by slice, atomically.

    Slices are written in order into a hidden temporary sibling of `target`; `commit()` (or
    leaving the `with` block without an error) renames it to `target`. On an error or
    `abort()`, the temporary output is removed and `target` is untouched.

    Args:
        target: a folder (written as one TIFF per slice), a path ending in .tif/.tiff
            (one multi-page TIFF, BigTIFF when larger than 4 GB), .ome.zarr/.zarr (an
            OME-Zarr image with a multiscale pyramid; IMAGE.ome.zarr/labels/NAME joins that
            image's labels group), .nii/.nii.gz (NIfTI) or .h5/.hdf5 (HDF5, `file.h5:/dataset`
            naming the dataset, /data otherwise).
        shape: (Z, Y, X) of the volume.
        dtype: pixel type to store.
        slice_names: file names of the slices (a folder target only); `slice_0000.tif`... if None.
        voxel_size: stored in the files' resolution and ImageJ metadata (TIFF), scale (OME-Zarr),
            header (NIfTI: the scan's own affine when it came from a NIfTI scan) or
            element_size_um (HDF5).
        overwrite: replace an existing target that bone_apps wrote (a folder or Zarr store with
            its marker file, a multi-page TIFF, NIfTI or HDF5 file with its tag); otherwise an
            existing target is an error.
            Anything else is refused (ForeignFilesError) and never touched.
        compression: tifffile compression name (e.g. "zlib"), or None for uncompressed.

    While writing, the target's lock (a hidden `.NAME.lock` next to it) keeps other bone_apps
    runs from writing it too. Disk errors (full, read-only, vanished folder) raise
    OutputWriteError with one sentence and leave no temporary output.
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
        file, self.dataset = formats.split_hdf5(Path(target).expanduser())
        self.target = file  # the file or folder that is written and renamed into place
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        self.overwrite = overwrite
        self.compression = compression
        self.form = formats.HDF5 if self.dataset is not None else formats.output_form(self.target)
        self.multipage = self.form == formats.TIFF_FILE
        if slice_names is not None and len(slice_names) != self.shape[0]:
            raise ValueError(f"{len(slice_names)} slice names for {self.shape[0]} slices")
        # Folders and stores prove ownership by their marker (outputs.py); files by their tag,
        # which each format keeps in its own place.
        self._ours = None if self.form in (formats.FOLDER, formats.ZARR) else formats.file_is_ours
        outputs.check_target(self.target, overwrite, self._ours)
        image = formats.labels_group_image(self.target) if self.form == formats.ZARR else None
        if image is not None:
            from bone_apps.core.io.formats.zarr import prepare_labels_group

            with self._disk_errors():
                prepare_labels_group(image)
        if not self.target.parent.exists():
            raise VolumeError(f"{self.target.parent} does not exist: create it or choose another output.")
        self.slice_names = list(slice_names) if slice_names else [
            f"slice_{z:04d}.tif" for z in range(self.shape[0])]
        self.partial = _partial_name(self.target)
        self.written = 0
        self._writer: tifffile.TiffWriter | None = None
        self._sink = None  # the writer of a format other than TIFF (core/formats)
        self._lock = outputs.OutputLock(self.target).acquire()
        with self._aborting():
            outputs.check_target(self.target, overwrite, self._ours)  # again: it may have changed
            outputs.clean_stale(self.target)
            if self.multipage:
                bigtiff = math.prod(self.shape) * self.dtype.itemsize > 2**32 - 2**25
                self._writer = tifffile.TiffWriter(self.partial, bigtiff=bigtiff)
            elif self.form == formats.FOLDER:
                self.partial.mkdir()
            else:
                self._sink = formats.make_sink(self.form, self.partial, self.target, self.shape,
                                               self.dtype, voxel_size, self.dataset)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise outputs.output_error(exc, self.target) from None

    @contextlib.contextmanager
    def _aborting(self) -> Iterator[None]:
        """On any error inside: remove the temporary output (the target stays as it was) and
        re-raise; a disk error becomes OutputWriteError with one sentence."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise outputs.output_error(exc, self.target) from None
        except BaseException:
            self.abort()
            raise

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
        with self._aborting():
            if self._sink is not None:
                self._sink.write(self.written, data)
            elif self._writer is not None:
                # The tag that proves the file is ours (checked before replacing it).
                shaped = {"shape": list(self.shape), "written_by": outputs.WRITTEN_BY}
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
            self.abort()
            raise VolumeError(f"only {self.written} of {self.shape[0]} slices of {self.target} "
                              "were written; the output was not saved.")
        with self._aborting():
            if self._sink is not None:
                self._sink.finish()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            elif self.form == formats.FOLDER:
                outputs.write_marker(self.partial, "label-stack", self.slice_names,
                                     reproducible=True)
            elif self.form == formats.ZARR:
                outputs.write_marker(self.partial, "ome-zarr", os.listdir(self.partial),
                                     reproducible=True)
            if os.path.lexists(self.target):
                if not self.overwrite:
                    raise OutputExistsError(f"{self.target} appeared while writing: choose another output.")
                if self._ours is None:
                    outputs.check_replaceable(self.target)
                elif not self._ours(self.target):
                    raise ForeignFilesError(f"{self.target} was not written by bone_apps, so it is not "
                                            "replaced: choose another name or move it away.")
                old = outputs.absolute(self.target)
                old = old.with_name(f".{old.name}.old-{os.getpid()}")
                os.replace(self.target, old)
                os.replace(self.partial, self.target)
                self._remove(old)
            else:
                os.replace(self.partial, self.target)
            if hasattr(self._sink, "committed"):
                self._sink.committed(self.target)
        self._lock.release()
        return self.target

    def abort(self) -> None:
        """Remove the temporary output; the target is left as it was."""
        for closing in (self._writer, getattr(self, "_sink", None)):
            if closing is None:
                continue
            try:
                closing.close()
            except OSError:
                pass  # a full disk fails the close too; the output is removed below
        self._writer = None
        self._sink = None
        self._remove(self.partial)
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    @staticmethod
    def _remove(path: Path) -> None:
        outputs.remove(path)

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
