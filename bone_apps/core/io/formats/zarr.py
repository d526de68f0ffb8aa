"""OME-Zarr images and plain Zarr arrays: reading them as volumes, and writing OME-Zarr outputs.

Reading: an OME-Zarr image (0.4 on Zarr v2, 0.5 on Zarr v3; a bioformats2raw store's one
image) is read at level 0, or at the level its path names (`scan.ome.zarr/2`, what
`formats.at_level` gives for `--level 2`); a plain Zarr array as it is. The voxel size is the
level's scale in its axes' units (micrometres when none is given). Slices are read through
zarr a slab of whole chunks at a time (formats/slabs.py): each chunk is decoded once, the
chunks of a slab in parallel, and memory holds one slab whatever the stack's length. When each
chunk is one whole slice stored raw (no compressor or filter), a slice is read straight from its
chunk file, as an uncompressed TIFF slice is, and can be memory-mapped for fitting.

Writing (`ZarrSink`, driven by writer.VolumeWriter): an OME-Zarr image of the volume with a
multiscale pyramid for viewers (each level half the last in z, y and x, by taking every other
voxel, as labels need: no new values are made), chunks of one slice (up to 1024x1024),
Blosc-LZ4, written as slices arrive. Levels shrink until the smaller side of the plane would
drop below 32 pixels. The version is the scan's when it was OME-Zarr, else 0.4 (which every
OME-Zarr viewer reads). A target at
`IMAGE.ome.zarr/labels/NAME` is written as a labels group member of that image (`image-label`
metadata, listed in `labels`), on the image's own grid.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from bone_apps.core.errors import VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.formats.slabs import SlabVolume
from bone_apps.core.io.outputs import MARKER
from bone_apps.core.io.volume import Reader, SourceFormat, VoxelSize, register_reader, short_error

DEFAULT_VERSION = "0.4"
MIN_LEVEL_SIDE = 32
MAX_LEVELS = 8
TILE = 1024  # the widest chunk of a written level, in y and x
# Blosc, which every Zarr reader decodes, with LZ4: labels shrink tens of times and any slice
# decodes about as fast as raw TIFF is read (benchmarks/bench_formats.py); zstd decodes 3x slower.
CODEC = "lz4"
DECODE_BATCH = 64  # chunks zarr decodes together (a read-ahead slab's)
_UNIT_TO_UM = {
    "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "micron": 1.0, "millimeter": 1e3,
    "centimeter": 1e4, "meter": 1e6, "um": 1.0, "nm": 1e-3, "mm": 1e3,
}
# Errors zarr and its codecs raise on damaged or missing data (a bad chunk: RuntimeError from
# the decompressor, ValueError for a chunk of the wrong size).
_READ_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError)


def _open_array(path: Path, where: str):
    """The zarr array at `path` (read-only), or VolumeError in one sentence."""
    import zarr

    try:
        return zarr.open_array(store=str(path), mode="r")
    except (*_READ_ERRORS, zarr.errors.BaseZarrError) as exc:
        raise VolumeError(f"{where} cannot be opened as a Zarr array ({short_error(exc)}): check that the "
                          "store is complete, or re-export it.") from exc


def _axis_names(entry: dict) -> list[str] | None:
    axes = entry.get("axes")
    if not isinstance(axes, list):
        return None
    return [str(a.get("name") if isinstance(a, dict) else a) for a in axes]


def _axis_units(entry: dict) -> list[str | None]:
    axes = entry.get("axes") or []
    return [a.get("unit") if isinstance(a, dict) else None for a in axes]


def _scale(transforms: object, ndim: int) -> list[float]:
    for transform in transforms if isinstance(transforms, list) else []:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            values = transform.get("scale")
            if isinstance(values, list) and len(values) == ndim:
                return [float(v) for v in values]
    return [1.0] * ndim


def _voxel_size(entry: dict, dataset: dict, roles: list[int | None], version: str) -> VoxelSize | None:
    """The level's voxel size in micrometres: its scale times the image-wide scale, in the axes'
    units (micrometres when an axis gives none); None when nothing says more than 1 per voxel."""
    ndim = len(roles)
    scale = np.multiply(_scale(dataset.get("coordinateTransformations"), ndim),
                        _scale(entry.get("coordinateTransformations"), ndim))
    units = _axis_units(entry) or [None] * ndim
    by_role = {}
    for i, role in enumerate(roles):
        if role is not None:
            factor = _UNIT_TO_UM.get(str(units[i]).lower(), 1.0) if units[i] else 1.0
            by_role[role] = float(scale[i]) * factor
    if not any(units) and all(v == 1.0 for v in by_role.values()):
        return None
    x = by_role.get(2, 1.0)
    return VoxelSize.with_source(by_role.get(0, x), by_role.get(1, x), x, SourceFormat("zarr", version))


class ZarrVolume(SlabVolume):
    """A Zarr array read as (Z, Y, X), slab by slab (see the module's docstring)."""

    kind = "zarr"
    _handles = ("_array",)

    def __init__(self, path: Path, array_path: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None, roles: list[int | None], chunk_depth: int,
                 version: str | None, levels: int) -> None:
        super().__init__(path, shape, dtype, voxel_size, chunk_depth)
        self.array_path = array_path
        self.roles = roles
        self.version = version  # OME-Zarr version, None for a plain array
        self.levels = levels  # resolution levels of its image (1 for a plain array)
        # Chunk file of slice z ("{z}" in a path relative to the array) when every chunk holds one
        # whole slice stored raw, and the value of an absent chunk: read like an uncompressed
        # TIFF slice, straight from the file (zarr's decoding machinery costs more than the read).
        self.raw_chunk: str | None = None
        self.raw_fill = 0

    def read_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        if self.raw_chunk is None:
            return super().read_slice(z, out)
        self._check_index(z)
        file = self.array_path / self.raw_chunk.format(z=z)
        plane = self.shape[1] * self.shape[2]
        if not file.exists():  # never written: the fill value, as zarr reads it
            data = np.full(self.shape[1:], self.raw_fill, dtype=self.dtype)
        else:
            try:
                data = np.fromfile(file, dtype=self.dtype, count=plane)
            except (OSError, ValueError) as exc:
                raise VolumeError(f"slice {z + 1} of {self.path} cannot be read ({short_error(exc)}): "
                                  "copy the "
                                  "store again or re-export it.") from exc
            if data.size != plane:
                raise VolumeError(f"slice {z + 1} of {self.path} is cut short ({file.name} holds "
                                  f"{data.size} of {plane} values): copy the store again or re-export it.")
            data = data.reshape(self.shape[1:])
        if out is None:
            return data
        out[...] = data
        return out

    def memmap_slice(self, z: int) -> np.ndarray | None:
        """Slice z as a read-only memory map of its chunk file when slices are stored raw."""
        if self.raw_chunk is None:
            return None
        self._check_index(z)
        file = self.array_path / self.raw_chunk.format(z=z)
        try:
            if file.stat().st_size != self.shape[1] * self.shape[2] * self.dtype.itemsize:
                return None  # absent or damaged: read_slice fills or names it
            return np.memmap(file, dtype=self.dtype, mode="r", shape=self.shape[1:]).view(np.ndarray)
        except (OSError, ValueError):
            return None

    def _array_handle(self):
        if self._array is None:
            import zarr

            # Decode the chunks of a slab together (zarr spreads them over its threads); the
            # array's pipeline keeps this setting, which is zarr's global one only meanwhile.
            with zarr.config.set({"codec_pipeline.batch_size": DECODE_BATCH}):
                self._array = _open_array(self.array_path, str(self.path))
        return self._array

    def _read(self, z0: int, z1: int) -> np.ndarray:
        index = formats.zyx_index(self.roles, z0, z1)
        try:
            data = np.asarray(self._array_handle()[index])
        except VolumeError:
            raise
        except _READ_ERRORS as exc:
            depth = self.chunk_depth
            if z1 - z0 > depth:  # several chunks deep: name the damaged one
                for start in range(z0 - z0 % depth, z1, depth):
                    self._read(max(start, z0), min(start + depth, z1))
            where = f"slice {z0 + 1}" if z1 == z0 + 1 else f"slices {z0 + 1} to {z1}"
            raise VolumeError(f"{where} of {self.path} cannot be read ({short_error(exc)}): a chunk of the "
                              "store is damaged, so copy the store again or re-export it.") from exc
        return np.ascontiguousarray(formats.as_zyx(data, self.roles), dtype=self.dtype)


def _image_of(path: Path) -> tuple[Path, dict, str, int] | None:
    """(image group, multiscales entry, version, level) when `path` is an OME-Zarr image, one of
    its levels, or a bioformats2raw store holding one image; None otherwise."""
    found = formats.read_multiscales(path)
    if found is not None:
        return path, found[0], found[1], 0
    parent = formats.read_multiscales(path.parent)
    if parent is not None:
        paths = [str(d.get("path")) for d in parent[0].get("datasets", []) if isinstance(d, dict)]
        if path.name in paths:
            return path.parent, parent[0], parent[1], paths.index(path.name)
    attrs = formats.zarr_attributes(path) or {}
    if "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in (attrs.get("ome") or {}):
        series = sorted(p.name for p in path.iterdir() if p.is_dir() and formats.read_multiscales(p))
        if len(series) == 1:
            return _image_of(path / series[0])
        if len(series) > 1:
            raise VolumeError(f"{path} holds {len(series)} images ({', '.join(series[:4])}): choose one, "
                              f"e.g. {path / series[0]}.")
    return None


def open_zarr(path: Path) -> ZarrVolume:
    """Open an OME-Zarr image or level, or a plain Zarr array (headers only).

    Raises:
        VolumeError: not a Zarr store, a group that is not an OME-Zarr image, a level or
            array that cannot be opened, channels or time points (4D data).
    """
    if not formats.is_zarr_store(path):
        raise VolumeError(f"{path} is not a Zarr store (it holds no zarr.json or .zgroup): choose the "
                          "folder of an OME-Zarr image.")
    image = _image_of(path)
    if image is None:
        attrs_file = path / "zarr.json"
        kind = ""
        if attrs_file.is_file():
            try:
                kind = json.loads(attrs_file.read_text(encoding="utf-8")).get("node_type", "")
            except (OSError, ValueError, AttributeError):
                kind = ""
        if kind == "group" or (path / ".zgroup").is_file():
            inside = sorted(p.name for p in path.iterdir() if p.is_dir() and formats.is_zarr_store(p))
            hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
            raise VolumeError(f"{path} is a Zarr group without OME-Zarr image metadata{hint}: choose the "
                              "OME-Zarr image itself, or one array inside the group.")
        array = _open_array(path, str(path))
        (z, y, x), roles = formats.zyx_axes(str(path), array.shape)
        return _raw_reading(ZarrVolume(path, path, (z, y, x), _native(array.dtype), None, roles,
                                       _chunk_depth(array, roles), None, 1), array)
    group, entry, version, level = image
    datasets = [d for d in entry.get("datasets", []) if isinstance(d, dict)]
    if not datasets:
        raise VolumeError(f"{group} has OME-Zarr metadata that lists no resolution levels: re-export it.")
    dataset = datasets[level]
    array_path = group / str(dataset.get("path"))
    array = _open_array(array_path, str(path))
    names = _axis_names(entry)
    if names is not None and len(names) != len(array.shape):
        raise VolumeError(f"{path} has {len(names)} axes in its metadata but {len(array.shape)} in its "
                          "data: re-export it.")
    (z, y, x), roles = formats.zyx_axes(str(path), array.shape, names)
    voxel = _voxel_size(entry, dataset, roles, version)
    return _raw_reading(ZarrVolume(path, array_path, (z, y, x), _native(array.dtype), voxel, roles,
                                   _chunk_depth(array, roles), version, len(datasets)), array)


def _raw_chunk_key(array, roles: list[int | None]) -> str | None:
    """The chunk path of slice "{z}" when each chunk of `array` is one whole (z, y, x) slice
    stored as raw bytes in this machine's order (no compressor, filter or transpose), else None."""
    import sys

    metadata = array.metadata
    if roles != [0, 1, 2] or tuple(array.chunks) != (1, *array.shape[1:]):
        return None
    dtype = np.dtype(array.dtype)
    if not dtype.isnative and dtype.itemsize > 1:
        return None
    if getattr(metadata, "zarr_format", None) == 2:
        if metadata.compressor is not None or metadata.filters or metadata.order != "C":
            return None
    else:
        codecs = tuple(getattr(metadata, "codecs", ()))
        if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
            return None
        endian = getattr(codecs[0], "endian", None)
        if dtype.itemsize > 1 and getattr(endian, "value", endian) != sys.byteorder:
            return None
    marker = 987654321  # a slice index no real key holds, replaced by the "{z}" placeholder
    key = metadata.encode_chunk_key((marker, 0, 0))
    return key.replace("{", "{{").replace("}", "}}").replace(str(marker), "{z}")


def _raw_reading(volume: ZarrVolume, array) -> ZarrVolume:
    """`volume`, reading slices straight from their chunk files when they are stored raw."""
    try:
        volume.raw_chunk = _raw_chunk_key(array, volume.roles)
        fill = array.fill_value
        volume.raw_fill = 0 if fill is None else fill
    except (AttributeError, TypeError, ValueError):  # a zarr without these metadata: decode
        volume.raw_chunk = None
    return volume


def _native(dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("=")


def _chunk_depth(array, roles: list[int | None]) -> int:
    chunks = getattr(array, "chunks", None) or ()
    return next((int(c) for c, role in zip(chunks, roles) if role == 0), 1)


# ----------------------------------------------------------------------------------------------
# Writing


def _pyramid(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(z step, y/x step) of each level: every other voxel in z, y and x per level."""
    z, y, x = shape
    steps = [(1, 1)]
    while len(steps) < MAX_LEVELS and min(y, x) // (2 * steps[-1][1]) >= MIN_LEVEL_SIDE:
        zs, ps = steps[-1]
        steps.append((zs * 2 if z > 1 else 1, ps * 2))
    return steps


def _level_shape(shape: tuple[int, int, int], step: tuple[int, int]) -> tuple[int, int, int]:
    z, y, x = shape
    return math.ceil(z / step[0]), math.ceil(y / step[1]), math.ceil(x / step[1])


def _format(version: str):
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if version == "0.5" else FormatV04()


class ZarrSink:
    """Writes a (Z, Y, X) volume as an OME-Zarr image into `partial`, slice by slice.

    Args:
        partial: the folder to write (renamed to `target` by the writer).
        target: the final name; `IMAGE/labels/NAME` makes it a labels group member of IMAGE.
        shape, dtype, voxel_size: the volume's.
    """

    def __init__(self, partial: Path, target: Path, shape: tuple[int, int, int], dtype: np.dtype,
                 voxel_size: VoxelSize | None) -> None:
        import zarr

        self.target = target
        self.shape = shape
        self.image = formats.labels_group_image(target)
        base_scale, base_translation, units = self._grid(voxel_size)
        self.steps = _pyramid(shape)
        self.fmt = _format(self.version)
        group = zarr.open_group(str(partial), mode="w-", zarr_format=self.fmt.zarr_format)
        self.arrays = []
        datasets = []
        for level, step in enumerate(self.steps):
            level_shape = _level_shape(shape, step)
            self.arrays.append(self._create(group, str(level), level_shape, dtype))
            transforms = [{"type": "scale", "scale": [base_scale[0] * step[0], base_scale[1] * step[1],
                                                      base_scale[2] * step[1]]}]
            if base_translation is not None:
                transforms.append({"type": "translation", "translation": list(base_translation)})
            datasets.append({"path": str(level), "coordinateTransformations": transforms})
        axes = [{"name": name, "type": "space", **({"unit": units} if units else {})} for name in "zyx"]
        from ome_zarr.writer import add_metadata, write_multiscales_metadata

        write_multiscales_metadata(group, datasets, fmt=self.fmt, axes=axes, name=target.name)
        if self.image is not None:
            # The image-label entry of this member; the labels group lists it once it is in place.
            add_metadata(group, {"image-label": {"version": self.fmt.version,
                                                 "source": {"image": "../../"}}}, fmt=self.fmt)
        self.group = group

    def _grid(self, voxel_size: VoxelSize | None) -> tuple[list[float], list[float] | None, str | None]:
        """Scale and translation of level 0 (z, y, x) and the unit; sets the version."""
        if self.image is not None:
            return self._image_grid()
        source = voxel_size.source if voxel_size is not None else None
        from_zarr = source is not None and source.kind == "zarr"
        self.version = str(source.details) if from_zarr else DEFAULT_VERSION
        if voxel_size is None:
            return [1.0, 1.0, 1.0], None, None
        return [voxel_size.z, voxel_size.y, voxel_size.x], None, "micrometer"

    def _image_grid(self) -> tuple[list[float], list[float] | None, str | None]:
        """A labels member lies on its image's grid: the level of the image with this shape."""
        entry, self.version = formats.read_multiscales(self.image)
        names = _axis_names(entry)
        for dataset in (d for d in entry.get("datasets", []) if isinstance(d, dict)):
            try:
                array = _open_array(self.image / str(dataset.get("path")), str(self.image))
                (z, y, x), roles = formats.zyx_axes(str(self.image), array.shape, names)
            except VolumeError:
                continue
            if (z, y, x) != tuple(self.shape):
                continue
            ndim = len(roles)
            scale = np.multiply(_scale(dataset.get("coordinateTransformations"), ndim),
                                _scale(entry.get("coordinateTransformations"), ndim))
            translation = None
            for transform in dataset.get("coordinateTransformations") or []:
                if isinstance(transform, dict) and transform.get("type") == "translation":
                    values = transform.get("translation")
                    if isinstance(values, list) and len(values) == ndim:
                        translation = [float(values[roles.index(r)]) if r in roles else 0.0
                                       for r in (0, 1, 2)]
            zyx_scale = [float(scale[roles.index(r)]) if r in roles else 1.0 for r in (0, 1, 2)]
            units = [u for u, r in zip(_axis_units(entry) or [None] * ndim, roles) if r is not None and u]
            return zyx_scale, translation, (units[0] if units else None)
        raise VolumeError(f"{self.target} would be labels of {self.image}, but none of its levels is "
                          f"{'x'.join(map(str, self.shape))}: predict from one of its levels, or write "
                          "the labels to their own OME-Zarr image.")

    def _create(self, group, name: str, shape: tuple[int, int, int], dtype: np.dtype):
        import zarr

        chunks = (1, min(shape[1], TILE), min(shape[2], TILE))
        if self.fmt.zarr_format == 2:
            from numcodecs import Blosc

            # "/" chunk keys: what OME-Zarr 0.4 asks.
            return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                      compressors=Blosc(cname=CODEC, clevel=5, shuffle=Blosc.SHUFFLE),
                                      chunk_key_encoding={"name": "v2", "separator": "/"})
        codec = zarr.codecs.BloscCodec(cname=CODEC, clevel=5, shuffle="shuffle")
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                  compressors=codec, dimension_names=["z", "y", "x"])

    def write(self, z: int, slice_: np.ndarray) -> None:
        """Slice z into level 0, and into every level whose z step it falls on."""
        for array, (zs, ps) in zip(self.arrays, self.steps):
            if z % zs == 0:
                array[z // zs] = slice_[::ps, ::ps]

    def finish(self) -> None:
        """Everything is on disk once the last slice is written (zarr writes each at once)."""

    def close(self) -> None:
        self.arrays = []

    def committed(self, target: Path) -> None:
        """Once in place: list a labels group member in its image's labels group."""
        if self.image is None:
            return
        import zarr
        from ome_zarr.writer import add_metadata

        labels = zarr.open_group(str(self.image / "labels"), mode="a", zarr_format=self.fmt.zarr_format)
        listed = labels_listed(self.image)
        if target.name not in listed:
            extra = {"version": self.fmt.version} if self.fmt.version != "0.4" else {}
            add_metadata(labels, {"labels": [*listed, target.name], **extra}, fmt=self.fmt)


def prepare_labels_group(image: Path) -> None:
    """Create IMAGE/labels (an empty labels group) when it is missing, so that a member can be
    written beside it and renamed into it."""
    import zarr

    if not formats.is_zarr_store(image / "labels"):
        version = formats.read_multiscales(image)[1]
        zarr.open_group(str(image / "labels"), mode="a", zarr_format=_format(version).zarr_format)


def labels_listed(image: Path) -> list[str]:
    """The names the labels group of an OME-Zarr image lists."""
    found = formats.zarr_attributes(image / "labels") or {}
    scope = found.get("ome") if isinstance(found.get("ome"), dict) else found
    names = scope.get("labels", [])
    return [str(n) for n in names] if isinstance(names, list) else []


def zarr_sources(path: Path) -> list[Path]:
    """Every file of the Zarr image or level at `path`, and the store's own metadata."""
    where = formats.location(path)
    found = {where / name for name in formats.ZARR_METADATA if (where / name).is_file()}
    for folder, _, names in os.walk(path):
        found |= {Path(folder) / name for name in names if name != MARKER}
    return sorted(found)


register_reader(Reader(kind="zarr", open=open_zarr, suffixes=formats.ZARR_SUFFIXES, files=False, folders=True,
                       holds=formats.is_zarr_store, sources=zarr_sources))
