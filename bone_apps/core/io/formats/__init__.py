"""Volume formats: which kind of scan or mask a path names, and where each kind is read and written.

One module per format, each holding a reader (a `volume.Volume` subclass it registers with
`volume.register_reader`) and a writer (a sink that `writer.VolumeWriter` streams slices into):

* zarr.py   OME-Zarr images (0.4 on Zarr v2, 0.5 on Zarr v3), their resolution levels and
            labels groups; plain Zarr arrays
* nifti.py  NIfTI-1/2 files (.nii, .nii.gz)
* hdf5.py   HDF5 datasets, named `file.h5:/path/to/dataset`

TIFF (folders of slices, multi-page files) is read in core/io/tiff.py.
This module only names things (suffixes, kinds, levels, axes) and imports no format library,
so `bone --help` stays fast. Every format is read as (Z, Y, X), Z being the slice axis: the
first axis of TIFF stacks, HDF5 datasets and plain Zarr arrays, OME-Zarr's "z" axis, NIfTI's
third (k) axis.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bone_apps.core.choices import Choice
from bone_apps.core.errors import BoneAppsError, VolumeError

TIFF_FILE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
HDF5_SUFFIXES = (".hdf5", ".h5")
# Longest first, so that "x.ome.zarr" loses ".ome.zarr" rather than ".zarr".
VOLUME_SUFFIXES = tuple(sorted(TIFF_FILE_SUFFIXES + ZARR_SUFFIXES + NIFTI_SUFFIXES + HDF5_SUFFIXES,
                               key=len, reverse=True))
# Files that make a folder a Zarr store (v3: zarr.json; v2: .zgroup / .zarray / .zattrs).
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
# `file.h5:/path/to/dataset`: the dataset part starts at the first ':' after an HDF5 suffix.
_HDF5_PATH = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5)):(?P<dataset>.*)$", re.IGNORECASE)


class VolumeFormat(Choice, what="output format", error=BoneAppsError):
    """The kinds of volume bone_apps writes (`--format`); TIFF is a folder of slices or one file."""

    TIFF = "tiff"
    ZARR = "zarr"
    NIFTI = "nifti"
    HDF5 = "hdf5"



# Output forms: what a written volume is on disk, and the suffix its name carries.
FOLDER, TIFF_FILE, ZARR, NIFTI, HDF5 = "folder", "tiff", "zarr", "nifti", "hdf5"
FORM_SUFFIX = {FOLDER: "", TIFF_FILE: ".tif", ZARR: ".ome.zarr", NIFTI: ".nii.gz", HDF5: ".h5"}
FORM_WORDS = {FOLDER: "a folder of TIFF slices", TIFF_FILE: "one multi-page TIFF", ZARR: "an OME-Zarr image",
              NIFTI: "a NIfTI file", HDF5: "an HDF5 dataset"}
FORM_OF_FORMAT = {VolumeFormat.ZARR: ZARR, VolumeFormat.NIFTI: NIFTI, VolumeFormat.HDF5: HDF5}
DEFAULT_HDF5_DATASET = "/data"


def split_hdf5(path: str | os.PathLike) -> tuple[Path, str | None]:
    """(file, dataset) of `file.h5:/path/to/dataset`; (path, None) when no dataset is named."""
    match = _HDF5_PATH.match(str(path))
    if match is None:
        return Path(path), None
    dataset = "/" + match["dataset"].strip("/")
    return Path(match["file"]), dataset


def _ends_with(name: str, suffixes: tuple[str, ...]) -> bool:
    return name.lower().endswith(suffixes)


def strip_suffix(name: str) -> str:
    """A file or store name without its volume suffix ("femur.ome.zarr" -> "femur")."""
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def location(path: str | os.PathLike) -> Path:
    """The file or folder on disk that holds a volume: the HDF5 file of `file.h5:/dataset`,
    the store of an OME-Zarr level (`scan.ome.zarr/0`), otherwise the path itself."""
    file, dataset = split_hdf5(path)
    if dataset is not None:
        return file
    path = Path(path)
    for parent in path.parents:
        if _ends_with(parent.name, ZARR_SUFFIXES):
            return parent
    return path


def form_of_name(path: str | os.PathLike) -> str | None:
    """The output form a name asks for by its suffix, or None for a plain name (a folder)."""
    name = split_hdf5(path)[0].name
    if split_hdf5(path)[1] is not None or _ends_with(name, HDF5_SUFFIXES):
        return HDF5
    if _ends_with(name, ZARR_SUFFIXES):
        return ZARR
    if _ends_with(name, NIFTI_SUFFIXES):
        return NIFTI
    if _ends_with(name, TIFF_FILE_SUFFIXES):
        return TIFF_FILE
    return None


def is_zarr_store(folder: Path) -> bool:
    """Whether a folder is a Zarr group or array (it holds Zarr metadata)."""
    return any((folder / name).is_file() for name in ZARR_METADATA)


def labels_group_image(target: str | os.PathLike) -> Path | None:
    """The OME-Zarr image whose labels group `target` would join (`IMAGE/labels/NAME`), or None."""
    target = Path(target)
    labels = target.parent
    image = labels.parent
    if labels.name != "labels" or not image.is_dir() or not is_zarr_store(image):
        return None
    return image if read_multiscales(image) is not None else None


def output_form(target: str | os.PathLike) -> str:
    """What a writer makes of `target`: its suffix's form, a labels-group member, or a folder."""
    form = form_of_name(target)
    if form is not None:
        return form
    return ZARR if labels_group_image(target) is not None else FOLDER


def own_suffix(path: str | os.PathLike) -> str:
    """The suffix of an output of a scan's own kind, judged from its path: "" for a folder of
    TIFF slices, ".tif", ".ome.zarr", ".nii" or ".nii.gz" (as the scan has it), ".h5"."""
    where = location(path)
    form = form_of_name(where if split_hdf5(path)[1] is None else path)
    if form is None and where.is_dir() and is_zarr_store(where):
        form = ZARR
    if form == NIFTI and where.name.lower().endswith(".nii"):
        return ".nii"
    return FORM_SUFFIX[form or FOLDER]


def is_tiff_name(path: str | os.PathLike) -> bool:
    """Whether a file's name is a TIFF's (.tif, .tiff, .ome.tif, .ome.tiff, any case)."""
    return _ends_with(Path(path).name, TIFF_FILE_SUFFIXES)


def is_volume_name(path: str | os.PathLike) -> bool:
    """Whether a file's name is that of a volume bone_apps reads (TIFF, NIfTI, HDF5)."""
    return form_of_name(path) in (TIFF_FILE, NIFTI, HDF5)


# ----------------------------------------------------------------------------------------------
# OME-Zarr metadata read without the zarr library (kind detection, levels, labels groups)


def zarr_attributes(folder: Path) -> dict | None:
    """A Zarr node's user attributes (v3 zarr.json 'attributes' or v2 .zattrs), or None."""
    try:
        v3 = folder / "zarr.json"
        if v3.is_file():
            return json.loads(v3.read_text(encoding="utf-8")).get("attributes") or {}
        v2 = folder / ".zattrs"
        if v2.is_file():
            return json.loads(v2.read_text(encoding="utf-8"))
        return {} if is_zarr_store(folder) else None
    except (OSError, ValueError, AttributeError):
        return None


def read_multiscales(folder: Path) -> tuple[dict, str] | None:
    """The first multiscales entry of an OME-Zarr image group and its version ("0.4"/"0.5")."""
    attrs = zarr_attributes(folder)
    if not isinstance(attrs, dict):
        return None
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    scope = ome if ome is not None else attrs
    multiscales = scope.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        return None
    entry = multiscales[0]
    version = str((ome or {}).get("version") or entry.get("version") or "0.4")
    return entry, version


def level_paths(image: Path) -> list[str]:
    """The dataset paths of an OME-Zarr image's resolution levels, finest first."""
    found = read_multiscales(image)
    if found is None:
        return []
    return [str(d.get("path")) for d in found[0].get("datasets", []) if isinstance(d, dict)]


def at_level(path: str | os.PathLike, level: int | None) -> Path:
    """`path` at resolution level `level` (0: the finest) of its OME-Zarr image.

    The level lives in the path itself, as the store names it (`scan.ome.zarr/2`), so that
    every part of bone_apps that opens a path, in this process or a worker, reads the same
    level. None leaves the path as given.

    Raises:
        VolumeError: a level above 0 of a volume that has one resolution, or beyond the last.
    """
    path = Path(path).expanduser()
    if level is None:
        return path
    if level < 0:
        raise VolumeError(f"level {level} is not a resolution level: use 0 (full resolution) or above.")
    image = path
    if path.is_dir() and read_multiscales(path) is None and read_multiscales(path.parent) is not None:
        image = path.parent  # a level given by its own path: count from its image
    levels = level_paths(image) if image.is_dir() else []
    if not levels:
        if level == 0:
            return path
        raise VolumeError(f"{path} has one resolution level, not an OME-Zarr pyramid: leave out "
                          f"--level {level}.")
    if level >= len(levels):
        raise VolumeError(f"{image} has {len(levels)} resolution levels (0 to {len(levels) - 1}): "
                          f"choose --level {len(levels) - 1} or lower.")
    return image / levels[level]


# ----------------------------------------------------------------------------------------------
# Axes


_EXTRA_AXIS_WORDS = {"t": "time points", "c": "channels"}


def zyx_axes(where: str, shape: tuple[int, ...], names: list[str] | None = None
             ) -> tuple[tuple[int, int, int], list[int | None]]:
    """How a stored array's axes become (Z, Y, X).

    Args:
        where: the volume, as messages name it.
        shape: the stored shape.
        names: axis names ("t", "c", "z", "y", "x", as OME-Zarr gives them), or None: then
            three axes are (Z, Y, X), two are (Y, X), and more must be of size 1 but three.

    Returns:
        ((Z, Y, X), roles): roles[i] is 0, 1 or 2 when stored axis i is Z, Y or X, None when
        it is an axis of size 1 read at index 0.

    Raises:
        VolumeError: channels, time points or any fourth axis longer than 1 (4D data).
    """
    shape = tuple(int(s) for s in shape)
    roles: list[int | None] = [None] * len(shape)
    if names is not None:
        for i, name in enumerate(names):
            role = {"z": 0, "y": 1, "x": 2}.get(str(name).lower())
            if role is not None:
                roles[i] = role
            elif shape[i] > 1:
                what = _EXTRA_AXIS_WORDS.get(str(name).lower(), f"entries along axis '{name}'")
                raise VolumeError(
                    f"{where} holds {shape[i]} {what} (axes {','.join(map(str, names))}, shape "
                    f"{'x'.join(map(str, shape))}): bone_apps reads one 3D greyscale volume, so "
                    "export one channel at one time point as its own image.")
        if 1 not in roles or 2 not in roles:
            raise VolumeError(f"{where} has axes {','.join(map(str, names))}, without both 'y' and 'x': "
                              "export it as a 3D (z, y, x) image.")
    elif len(shape) == 3:
        roles = [0, 1, 2]
    elif len(shape) == 2:
        roles = [1, 2]
    else:
        long = [i for i, s in enumerate(shape) if s > 1]
        if len(long) > 3 or len(shape) < 2:
            raise VolumeError(
                f"{where} holds {len(shape)}D data (shape {'x'.join(map(str, shape))}): bone_apps reads "
                "one 3D greyscale volume (Z, Y, X), so export one channel at one time point as a 3D "
                "dataset.")
        keep = [i for i in range(len(shape)) if i in long]
        while len(keep) < 2:  # a single slice, or a line: pad with the last size-1 axes
            keep = sorted({*keep, max(i for i in range(len(shape)) if i not in keep)})
        for role, i in zip((0, 1, 2)[3 - len(keep):], keep):
            roles[i] = role
    size = {role: shape[i] for i, role in enumerate(roles) if role is not None}
    return (size.get(0, 1), size[1], size[2]), roles


def zyx_index(roles: list[int | None], z0: int, z1: int) -> tuple:
    """The index into the stored array that reads slices z0..z1-1 (see zyx_axes)."""
    return tuple(0 if role is None else slice(z0, z1) if role == 0 else slice(None) for role in roles)


def as_zyx(data, roles: list[int | None]):
    """What zyx_index read, as a (Z, Y, X) array (a view where possible)."""
    kept = [role for role in roles if role is not None]
    if 0 not in kept:  # no Z axis stored: one slice
        data = data[None]
        kept = [0, *kept]
    order = sorted(range(len(kept)), key=lambda i: kept[i])
    return data.transpose(order) if order != list(range(len(kept))) else data


# ----------------------------------------------------------------------------------------------
# Ownership and writing


def file_is_ours(path: str | os.PathLike) -> bool:
    """Whether bone_apps wrote a volume file: the `written_by` tag of a multi-page TIFF, the
    comment extension of a NIfTI file, the attribute of an HDF5 file."""
    form = form_of_name(path)
    if form == NIFTI:
        from bone_apps.core.io.formats.nifti import is_ours

        return is_ours(Path(path))
    if form == HDF5:
        from bone_apps.core.io.formats.hdf5 import is_ours

        return is_ours(split_hdf5(path)[0])
    if form == TIFF_FILE:
        from bone_apps.core.io.outputs import tiff_is_ours

        return tiff_is_ours(path)
    return False


def is_ours(path: str | os.PathLike) -> bool:
    """Whether a volume on disk was written by bone_apps (a folder or store with its marker, a
    file with its tag)."""
    from bone_apps.core.io.outputs import read_marker

    where = location(path)
    return read_marker(where) is not None if where.is_dir() else file_is_ours(where)


def make_sink(form: str, partial: Path, target: Path, shape: tuple[int, int, int], dtype,
              voxel_size, dataset: str | None = None):
    """The writer of one output form (ZARR, NIFTI, HDF5) into `partial`: it takes `write(z, slice)`,
    `finish()` once every slice is in, `close()` on abort, and optionally `committed(target)`."""
    if form == ZARR:
        from bone_apps.core.io.formats.zarr import ZarrSink

        return ZarrSink(partial, target, shape, dtype, voxel_size)
    if form == NIFTI:
        from bone_apps.core.io.formats.nifti import NiftiSink

        return NiftiSink(partial, target, shape, dtype, voxel_size)
    if form == HDF5:
        from bone_apps.core.io.formats.hdf5 import Hdf5Sink

        return Hdf5Sink(partial, target, shape, dtype, voxel_size, dataset or DEFAULT_HDF5_DATASET)
    raise ValueError(f"no sink for {form}")


# What `--level` says in every command that reads scans or masks.
LEVEL_HELP = ("OME-Zarr inputs: read resolution level N (0, the default, is full resolution); the same "
              "as naming the level's own path, e.g. SCAN.ome.zarr/1")
VOLUME_HELP = ("a folder of TIFF slices, a TIFF file, an OME-Zarr image (.ome.zarr), a NIfTI file "
               "(.nii, .nii.gz) or an HDF5 dataset (FILE.h5:/path/to/dataset)")
