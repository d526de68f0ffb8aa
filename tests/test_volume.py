"""Scans and masks on disk: lazy reading, round trips, voxel size, clear errors, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bone_apps.core.errors import OutputExistsError, ShapeMismatchError, VolumeError
from bone_apps.core.io.volume import VoxelSize, check_same_shape, natural_key, open_volume
from bone_apps.core.io.writer import VolumeWriter, write_volume

VS = VoxelSize(z=12.5, y=10.0, x=10.0)


def ramp(shape=(5, 6, 7), dtype=np.uint16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("target", ["folder", "stack.tif"])
def test_round_trip_keeps_pixels_shape_dtype_names_and_voxel_size(tmp_path, dtype, target):
    data = ramp(dtype=dtype)
    names = [f"femur_{z}.tif" for z in range(5)] if target == "folder" else None
    write_volume(tmp_path / target, data, slice_names=names, voxel_size=VS)
    volume = open_volume(tmp_path / target)
    assert volume.shape == data.shape and volume.dtype == data.dtype
    assert np.array_equal(volume.read_slab(0, 5), data)
    assert np.array_equal(volume.read_slice(3), data[3])
    assert volume.voxel_size == pytest.approx(VS)
    if names:
        assert volume.slice_names == names


def test_slices_sort_naturally_and_other_files_are_skipped(tmp_path):
    for z in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"s_{z}.TIF", np.full((4, 4), z, np.uint8))
    (tmp_path / "notes.txt").write_text("scan notes")
    (tmp_path / "Thumbs.db").write_bytes(b"\0")
    tifffile.imwrite(tmp_path / "s_3.tiff", np.full((4, 4), 3, np.uint8))
    volume = open_volume(tmp_path)
    assert volume.slice_names == ["s_1.TIF", "s_2.TIF", "s_3.tiff", "s_10.TIF"]
    assert [int(s[0, 0]) for s in volume.iter_slices()] == [1, 2, 3, 10]
    assert volume.skipped == ["Thumbs.db", "notes.txt"]
    assert volume.skipped_note().startswith("2 file(s) in ") and "Thumbs.db" in volume.skipped_note()
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


def test_uncompressed_slices_are_read_from_their_byte_offset(tmp_path):
    write_volume(tmp_path / "raw", ramp())
    tifffile.imwrite(tmp_path / "packed.tif", ramp(), compression="zlib")
    raw, packed = open_volume(tmp_path / "raw"), open_volume(tmp_path / "packed.tif")
    assert all(f.offset is not None for f in raw._slice_files)
    assert packed._series_offset is None  # compressed: decoded page by page
    assert np.array_equal(packed.read_slab(1, 4), ramp()[1:4])


def test_imagej_hyperstack_and_ome_tiff_are_read_with_voxel_size(tmp_path):
    data = ramp()
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 10.0, 1 / 10.0),
                     metadata={"spacing": 12.5, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "scan.ome.tif", data, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 10.0, "PhysicalSizeY": 10.0,
                               "PhysicalSizeZ": 12.5})
    for name in ("ij.tif", "scan.ome.tif"):
        volume = open_volume(tmp_path / name)
        assert volume.shape == data.shape
        assert volume.voxel_size == pytest.approx(VS)
        assert np.array_equal(volume.read_slice(4), data[4])


def test_volume_survives_pickling_for_worker_processes(tmp_path):
    import pickle

    write_volume(tmp_path / "s.tif", ramp())
    volume = open_volume(tmp_path / "s.tif")
    volume.read_slice(0)
    clone = pickle.loads(pickle.dumps(volume))
    assert np.array_equal(clone.read_slice(2), ramp()[2])


def _message(exc_info) -> str:
    return str(exc_info.value)


def test_missing_path_empty_folder_and_folder_without_tiff(tmp_path):
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "nope")
    assert "does not exist" in _message(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "empty")
    assert "empty" in _message(err) and "empty" in _message(err).split(":")[0]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.png").write_bytes(b"png")
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "docs")
    assert "no TIFF" in _message(err)


def test_mixed_shapes_and_dtypes_name_the_offending_file(tmp_path):
    tifffile.imwrite(tmp_path / "a_1.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "a_2.tif", np.zeros((5, 4), np.uint8))
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path)
    assert "a_2.tif" in _message(err) and "different scans" in _message(err)
    tifffile.imwrite(tmp_path / "a_2.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path)
    assert "uint16" in _message(err)


def test_corrupt_tiff_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "s_1.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "s_2.tif").write_bytes(b"II*\0garbage that is not a tiff")
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path)
    assert "s_2.tif" in _message(err) and "not a readable TIFF" in _message(err)


def test_truncated_slice_is_reported_when_read(tmp_path):
    write_volume(tmp_path / "v", ramp())
    volume = open_volume(tmp_path / "v")
    victim = tmp_path / "v" / volume.slice_names[2]
    os.truncate(victim, victim.stat().st_size - 20)
    with pytest.raises(VolumeError) as err:
        volume.read_slice(2)
    assert volume.slice_names[2] in _message(err)


def test_rgb_and_unsupported_types_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "rgb.tif")
    assert "RGB" in _message(err)
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 8, 8), np.float32), photometric="minisblack")
    assert open_volume(tmp_path / "f.tif").dtype == np.float32
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "f.tif", role="mask")
    assert "mask" in _message(err) and "uint8" in _message(err)
    tifffile.imwrite(tmp_path / "i64.tif", np.zeros((2, 8, 8), np.int64), photometric="minisblack")
    with pytest.raises(VolumeError):
        open_volume(tmp_path / "i64.tif")


def test_shape_mismatch_names_both_volumes(tmp_path):
    write_volume(tmp_path / "scan", ramp((5, 6, 7)))
    write_volume(tmp_path / "mask", ramp((4, 6, 7), np.uint8))
    with pytest.raises(ShapeMismatchError) as err:
        check_same_shape(open_volume(tmp_path / "scan"), open_volume(tmp_path / "mask", "mask"))
    assert "mask" in _message(err) and "5x6x7" in _message(err) and "4x6x7" in _message(err)


@pytest.mark.parametrize("target", ["out", "out.tif"])
def test_interrupted_write_leaves_no_output_and_existing_output_is_kept(tmp_path, target):
    data = ramp(dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        with VolumeWriter(tmp_path / target, data.shape, data.dtype) as writer:
            writer.write(data[0])
            writer.write(data[1])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary remains

    write_volume(tmp_path / target, data)
    with pytest.raises(OutputExistsError):
        write_volume(tmp_path / target, data + 1)
    assert np.array_equal(open_volume(tmp_path / target).read_slab(0, 5), data)
    write_volume(tmp_path / target, data + 1, overwrite=True)
    assert np.array_equal(open_volume(tmp_path / target).read_slab(0, 5), data + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target]


def test_incomplete_volume_is_not_committed(tmp_path):
    writer = VolumeWriter(tmp_path / "out", (3, 4, 4), np.uint8)
    writer.write(np.zeros((4, 4), np.uint8))
    with pytest.raises(VolumeError):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_multipage_output_above_4gb_would_be_bigtiff(tmp_path):
    writer = VolumeWriter(tmp_path / "big.tif", (1100, 2000, 2000), np.uint8)
    try:
        assert writer._writer.tiff.is_bigtiff
    finally:
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_one_name_for_a_volume_whatever_its_form():
    """Pairs match and outputs are named on the same id: folder name or file name without
    .tif / .tiff / .ome.tif (an OME-TIFF scan pairs with a plain TIFF mask)."""
    from bone_apps.core.io.volume import volume_id
    from bone_apps.core.predict.output_plan import scan_id

    for name in ("femur_01", "femur_01.tif", "femur_01.TIFF", "femur_01.ome.tif", "femur_01.ome.tiff"):
        assert volume_id(Path("data") / name) == "femur_01"
    assert scan_id is volume_id


def test_a_multipage_tiff_names_its_slices_after_its_volume_id(tmp_path):
    from bone_apps.core.io.volume import volume_id

    path = tmp_path / "femur.v2.tif"
    write_volume(path, ramp((4, 8, 8), np.uint8))
    volume = open_volume(path)
    assert volume_id(path) == "femur.v2"
    assert volume.slice_names == [f"femur.v2_{z:04d}.tif" for z in range(4)]


def test_a_new_format_is_one_reader_that_registers_itself(tmp_path):
    """open_volume asks the registry: a reader registered for a suffix opens such files."""
    from bone_apps.core.io import volume as volumes

    class NpyVolume(volumes.Volume):
        kind = "npy"

        def __init__(self, path: Path) -> None:
            self._data = np.load(path, mmap_mode="r")
            super().__init__(path, self._data.shape, self._data.dtype, None)

        def _read(self, z0: int, z1: int) -> np.ndarray:
            return np.asarray(self._data[z0:z1])

    data = ramp((4, 6, 5), np.uint16)
    np.save(tmp_path / "scan.npy", data)
    with pytest.raises(VolumeError, match="not a volume bone_apps reads"):
        open_volume(tmp_path / "scan.npy")
    volumes.register_reader(volumes.Reader(kind="npy", open=NpyVolume, suffixes=(".npy",)))
    try:
        volume = open_volume(tmp_path / "scan.npy")
        assert volume.kind == "npy" and volume.shape == (4, 6, 5)
        assert (volume.read_slab(0, 4) == data).all() and (volume.read_slice(2) == data[2]).all()
    finally:
        volumes._READERS.pop("npy")
    assert [r.kind for r in volumes.readers()] == ["tiff", "hdf5", "nifti", "zarr"]
