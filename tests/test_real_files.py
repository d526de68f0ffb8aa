"""Real users' files: compressed and tiled TIFF, BigTIFF, multi-series and hyperstack files, messy
slice folders, unusual paths. Every file here is written by tifffile (+ imagecodecs), never mocked."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tracemalloc

import numpy as np
import pytest
import tifffile

from bone_apps.core.errors import VolumeError
from bone_apps.core.io.volume import open_volume

pytest.importorskip("imagecodecs")

LOSSLESS = ["lzw", "adobe_deflate", "deflate", "packbits", "zstd"]
STORAGE = {"strips": {}, "tiled": {"tile": (32, 32)}, "bigtiff": {"bigtiff": True},
           "predictor": {"predictor": True}, "big-endian": {"byteorder": ">"}}


def scan(shape=(6, 64, 96), dtype=np.uint16) -> np.ndarray:
    """Deterministic, not trivially compressible pixels."""
    rng = np.random.default_rng(7)
    top = 250 if dtype == np.uint8 else 60000
    return rng.integers(0, top, size=shape).astype(dtype)


def smooth(shape=(4, 64, 64)) -> np.ndarray:
    """8-bit pixels JPEG keeps nearly intact."""
    z, y, x = np.indices(shape)
    return (60 + 2 * z + y + x).astype(np.uint8)


def write(target, data, layout, **kwargs) -> None:
    """Write `data` as one multi-page file or as a folder of one-slice files."""
    kwargs.setdefault("photometric", "minisblack")
    if layout == "file":
        tifffile.imwrite(target, data, **kwargs)
        return
    target.mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(target / f"slice_{z:03d}.tif", plane, **kwargs)


def message(exc_info) -> str:
    return str(exc_info.value)


# ------------------------------------------------------------------------------------------------
# 1. Compression, tiles, BigTIFF


@pytest.mark.parametrize(("compression", "storage"), [
    (c, s) for c in LOSSLESS for s in STORAGE if (c, s) != ("packbits", "predictor")])
@pytest.mark.parametrize("layout", ["file", "folder"])
def test_lossless_compressed_tiff_reads_the_written_pixels(tmp_path, layout, compression, storage):
    data = scan()
    target = tmp_path / ("stack.tif" if layout == "file" else "slices")
    write(target, data, layout, compression=compression, **STORAGE[storage])
    volume = open_volume(target)
    assert volume.shape == data.shape and volume.dtype == data.dtype
    assert np.array_equal(volume.read_slab(0, len(data)), data)
    assert np.array_equal(volume.read_slice(3), data[3])
    assert volume.memmap_slice(3) is None  # compressed: callers decode with read_slice


@pytest.mark.parametrize("storage", ["strips", "tiled", "bigtiff"])
@pytest.mark.parametrize("layout", ["file", "folder"])
def test_jpeg_8bit_reads_what_tifffile_decodes(tmp_path, layout, storage):
    data = smooth()
    target = tmp_path / ("stack.tif" if layout == "file" else "slices")
    write(target, data, layout, compression="jpeg", **STORAGE[storage])
    volume = open_volume(target)
    got = volume.read_slab(0, len(data))
    expected = (tifffile.imread(target) if layout == "file"
                else np.stack([tifffile.imread(target / n) for n in volume.slice_names]))
    assert np.array_equal(got, expected)
    assert np.abs(got.astype(int) - data).max() <= 4  # lossy, but close on smooth data


@pytest.mark.parametrize("storage", ["tiled", "bigtiff", "big-endian"])
@pytest.mark.parametrize("layout", ["file", "folder"])
def test_uncompressed_tiled_bigtiff_and_big_endian_files(tmp_path, layout, storage):
    data = scan()
    target = tmp_path / ("stack.tif" if layout == "file" else "slices")
    write(target, data, layout, **STORAGE[storage])
    volume = open_volume(target)
    assert np.array_equal(volume.read_slab(0, len(data)), data)
    mapped = volume.memmap_slice(2)
    if storage == "tiled":
        assert mapped is None  # tiles are not one run of bytes
    else:  # the fast path: raw bytes straight from the file
        assert mapped is not None and np.array_equal(mapped, data[2])


def test_compressed_volume_survives_pickling(tmp_path):
    data = scan()
    write(tmp_path / "z.tif", data, "file", compression="zstd")
    volume = open_volume(tmp_path / "z.tif")
    volume.read_slice(0)
    clone = pickle.loads(pickle.dumps(volume))
    assert np.array_equal(clone.read_slice(4), data[4])


# ------------------------------------------------------------------------------------------------
# 1b. Truncated or corrupt data


def test_damaged_page_of_compressed_multipage_file_names_the_slice(tmp_path):
    data = scan((10, 64, 64))
    tifffile.imwrite(tmp_path / "s.tif", data, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        start = tif.pages[6].dataoffsets[0]
    with open(tmp_path / "s.tif", "r+b") as fh:
        fh.seek(start + 2)
        fh.write(b"\xff" * 64)
    volume = open_volume(tmp_path / "s.tif")
    assert np.array_equal(volume.read_slice(5), data[5])
    with pytest.raises(VolumeError) as err:
        volume.read_slice(6)
    assert message(err).startswith(f"slice 7 of {tmp_path / 's.tif'}") and "re-export" in message(err)


def test_truncated_compressed_multipage_file_names_the_last_slice(tmp_path):
    data = scan((10, 64, 64))
    tifffile.imwrite(tmp_path / "s.tif", data, compression="lzw", photometric="minisblack")
    os.truncate(tmp_path / "s.tif", os.path.getsize(tmp_path / "s.tif") - 500)
    volume = open_volume(tmp_path / "s.tif")
    with pytest.raises(VolumeError) as err:
        volume.read_slice(9)
    assert f"slice 10 of {tmp_path / 's.tif'}" in message(err)


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_file_cut_in_the_middle_is_refused_not_read_in_part(tmp_path, compression):
    tifffile.imwrite(tmp_path / "s.tif", scan((10, 64, 64)), compression=compression,
                     photometric="minisblack")
    os.truncate(tmp_path / "s.tif", int(os.path.getsize(tmp_path / "s.tif") * 0.7))
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "s.tif")
    assert "s.tif is truncated or damaged" in message(err)


def test_corrupt_compressed_slice_in_folder_names_the_file(tmp_path):
    write(tmp_path / "v", scan(), "folder", compression="zstd")
    victim = tmp_path / "v" / "slice_004.tif"
    with tifffile.TiffFile(victim) as tif:
        start = tif.pages.first.dataoffsets[0]
    with open(victim, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\0" * 32)
    volume = open_volume(tmp_path / "v")
    with pytest.raises(VolumeError) as err:
        volume.read_slice(4)
    assert str(victim) in message(err) and "cannot be decoded" in message(err)


# ------------------------------------------------------------------------------------------------
# 2. Files that hold more than one stack


def test_plain_multipage_with_pages_of_two_sizes_is_refused(tmp_path):
    big, small = scan((5, 64, 64)), scan((2, 32, 32))
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for plane in (*big[:3], *small, *big[3:]):
            tif.write(plane, photometric="minisblack", metadata=None)
    with tifffile.TiffFile(tmp_path / "mixed.tif") as tif:
        assert len(tif.series) == 2  # tifffile splits by shape; series 0 alone would drop pages
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "mixed.tif")
    assert "mixes pages of different sizes" in message(err)
    assert "5 of 64x64 uint16" in message(err) and "2 of 32x32 uint16" in message(err)


def test_plain_multipage_with_pages_of_two_types_is_refused(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for dtype in (np.uint16, np.uint16, np.uint8):
            tif.write(np.zeros((16, 16), dtype), photometric="minisblack", metadata=None)
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "mixed.tif")
    assert "uint8" in message(err) and "uint16" in message(err)


@pytest.mark.parametrize("kind", ["shaped", "ome"])
def test_file_with_two_series_is_refused_naming_both(tmp_path, kind):
    name = "two.ome.tif" if kind == "ome" else "two.tif"
    with tifffile.TiffWriter(tmp_path / name, ome=kind == "ome") as tif:
        tif.write(scan((16, 64, 64)), photometric="minisblack", metadata={"axes": "ZYX"})
        tif.write(scan((8, 32, 32)), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / name)
    assert message(err) == (f"{tmp_path / name} holds 2 series (16x64x64 uint16 and 8x32x32 uint16): "
                            "export the one to use as its own file.")


@pytest.mark.parametrize(("axes", "shape", "named"), [
    ("TZYX", (3, 4, 32, 32), ["3 time points (T)"]),
    ("ZCYX", (4, 2, 32, 32), ["2 channels (C)"]),
    ("TZCYX", (2, 4, 3, 32, 32), ["2 time points (T)", "3 channels (C)"]),
])
def test_imagej_hyperstack_with_time_or_channels_is_refused(tmp_path, axes, shape, named):
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros(shape, np.uint16), imagej=True,
                     metadata={"axes": axes})
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "hyper.tif")
    assert all(text in message(err) for text in named) and axes in message(err)


def test_ome_tiff_with_channels_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "c.ome.tif", np.zeros((2, 4, 32, 32), np.uint8), ome=True,
                     metadata={"axes": "CZYX"})
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "c.ome.tif")
    assert "2 channels (C)" in message(err)


def test_thumbnail_and_pyramid_levels_are_not_slices(tmp_path):
    data = scan((8, 64, 64))
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(data, photometric="minisblack")
        tif.write(data[0, ::4, ::4], subfiletype=1, photometric="minisblack", metadata=None)
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", ome=True) as tif:
        tif.write(data, subifds=1, metadata={"axes": "ZYX"}, photometric="minisblack")
        tif.write(data[:, ::2, ::2], subfiletype=1, photometric="minisblack")
    for name in ("thumb.tif", "pyramid.ome.tif"):
        volume = open_volume(tmp_path / name)
        assert volume.shape == data.shape
        assert np.array_equal(volume.read_slab(0, 8), data)


def test_thumbnail_before_the_stack_is_not_a_slice(tmp_path):
    data = scan((6, 64, 64))
    with tifffile.TiffWriter(tmp_path / "t.tif") as tif:
        tif.write(data[0, ::4, ::4], subfiletype=1, photometric="minisblack", metadata=None)
        for plane in data:
            tif.write(plane, photometric="minisblack", metadata=None)
    volume = open_volume(tmp_path / "t.tif")
    assert volume.shape == data.shape and np.array_equal(volume.read_slab(0, 6), data)


def test_pages_beyond_what_the_imagej_metadata_describes_are_refused(tmp_path):
    with tifffile.TiffWriter(tmp_path / "ij.tif") as tif:
        for z, plane in enumerate(scan((7, 32, 32))):
            tif.write(plane, photometric="minisblack", metadata=None, contiguous=False,
                      description="ImageJ=1.54f\nimages=5\nslices=5\n" if z == 0 else None)
    with tifffile.TiffFile(tmp_path / "ij.tif") as tif:
        assert tif.series[0].shape == (5, 32, 32)  # tifffile believes the metadata
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "ij.tif")
    assert "has 7 pages but its ImageJ metadata describes only 5" in message(err)


# ------------------------------------------------------------------------------------------------
# 3. Messy slice folders


def test_hidden_and_appledouble_files_are_skipped_and_counted(tmp_path):
    data = scan((3, 16, 16))
    write(tmp_path / "v", data, "folder")
    (tmp_path / "v" / "._slice_000.tif").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (tmp_path / "v" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "v" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "v" / ".hidden_dir").mkdir()
    volume = open_volume(tmp_path / "v")
    assert volume.slice_names == ["slice_000.tif", "slice_001.tif", "slice_002.tif"]
    assert np.array_equal(volume.read_slab(0, 3), data)
    assert volume.skipped == [".DS_Store", "._slice_000.tif", "Thumbs.db"]
    assert volume.skipped_note().startswith("3 file(s) in ")


def test_dangling_link_named_like_a_slice_is_named(tmp_path):
    write(tmp_path / "v", scan((3, 16, 16)), "folder")
    (tmp_path / "v" / "slice_003.tif").symlink_to(tmp_path / "elsewhere" / "slice_003.tif")
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "v")
    assert message(err).startswith(f"{tmp_path / 'v' / 'slice_003.tif'} is a link to ")
    assert "does not exist" in message(err)


def test_dangling_link_that_is_no_slice_is_skipped(tmp_path):
    write(tmp_path / "v", scan((3, 16, 16)), "folder")
    (tmp_path / "v" / "notes.txt").symlink_to(tmp_path / "gone.txt")
    assert open_volume(tmp_path / "v").skipped == ["notes.txt"]


def test_link_to_a_real_slice_is_followed(tmp_path):
    data = scan((3, 16, 16))
    write(tmp_path / "v", data[:2], "folder")
    tifffile.imwrite(tmp_path / "outside.tif", data[2], photometric="minisblack")
    (tmp_path / "v" / "slice_002.tif").symlink_to(tmp_path / "outside.tif")
    assert np.array_equal(open_volume(tmp_path / "v").read_slab(0, 3), data)


@pytest.mark.parametrize(("odd", "what"), [
    (np.zeros((16, 20), np.uint16), "16x20 uint16"),
    (np.zeros((16, 16), np.uint8), "16x16 uint8"),
])
@pytest.mark.parametrize("position", [0, 2])
def test_one_slice_of_another_size_or_type_is_named_against_the_others(tmp_path, odd, what, position):
    write(tmp_path / "v", scan((5, 16, 16)), "folder")
    tifffile.imwrite(tmp_path / "v" / f"slice_{position:03d}.tif", odd, photometric="minisblack")
    with pytest.raises(VolumeError) as err:
        open_volume(tmp_path / "v")
    assert message(err) == (
        f"{tmp_path / 'v' / f'slice_{position:03d}.tif'} is {what} but 4 of the 5 slices are "
        "16x16 uint16 (height x width): the folder mixes slices of different scans; keep one scan "
        "per folder.")


def test_mixed_compressions_in_one_folder_are_fine(tmp_path):
    data = scan((4, 16, 16))
    (tmp_path / "v").mkdir()
    for z, compression in enumerate([None, "lzw", "zstd", None]):
        tifffile.imwrite(tmp_path / "v" / f"s_{z}.tif", data[z], compression=compression,
                         photometric="minisblack")
    volume = open_volume(tmp_path / "v")
    assert np.array_equal(volume.read_slab(0, 4), data)
    assert [volume.memmap_slice(z) is None for z in range(4)] == [False, True, True, False]


# ------------------------------------------------------------------------------------------------
# 4. Paths


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_unicode_and_spaces_in_paths(tmp_path, layout):
    data = scan((3, 16, 16))
    parent = tmp_path / "Mäuse femur 1" / "Röntgen μCT"
    parent.mkdir(parents=True)
    target = parent / ("Schädel links.tif" if layout == "file" else "Scheibe n°1")
    write(target, data, layout, compression="lzw")
    volume = open_volume(target)
    assert np.array_equal(volume.read_slab(0, 3), data)
    clone = pickle.loads(pickle.dumps(volume))
    assert np.array_equal(clone.read_slice(1), data[1])


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_read_only_folder_and_files_are_read(tmp_path, layout):
    data = scan((3, 16, 16))
    (tmp_path / "ro").mkdir()
    target = tmp_path / "ro" / ("s.tif" if layout == "file" else "slices")
    write(target, data, layout)
    paths = [target, *(target.iterdir() if target.is_dir() else [])]
    for path in [*paths[1:], *paths[:1], tmp_path / "ro"]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        volume = open_volume(target)
        assert np.array_equal(volume.read_slab(0, 3), data)
        assert np.array_equal(volume.memmap_slice(1), data[1])
    finally:
        for path in [tmp_path / "ro", *paths]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


# ------------------------------------------------------------------------------------------------
# 5. A 16-bit scan given as a mask


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_16bit_scan_opened_as_mask_reads_no_pixels(tmp_path, layout):
    data = np.zeros((64, 256, 256), np.uint16)  # 8 MiB of pixels
    data[:, 100, 100] = 40000
    target = tmp_path / ("s.tif" if layout == "file" else "slices")
    write(target, data, layout)
    tracemalloc.start()
    try:
        volume = open_volume(target, role="mask")
        opened = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        one = volume.read_slice(10)
        read = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert volume.dtype == np.uint16 and one[100, 100] == 40000
    assert opened < 1 << 20  # headers only
    assert read < 3 * one.nbytes  # one slice, not the volume


# ------------------------------------------------------------------------------------------------
# 6. More than one sample per pixel


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_rgb_and_grey_alpha_are_named(tmp_path, layout):
    target = tmp_path / ("rgb.tif" if layout == "file" else "rgb")
    write(target, np.zeros((2, 16, 16, 3), np.uint8), layout, photometric="rgb")
    with pytest.raises(VolumeError) as err:
        open_volume(target)
    assert "3 samples per pixel (RGB colour)" in message(err) and "greyscale" in message(err)
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    grey_alpha = np.zeros((2, 16, 16, 2), np.uint8)
    write(target, grey_alpha, layout, extrasamples=["unassalpha"])
    with pytest.raises(VolumeError) as err:
        open_volume(target)
    assert "2 samples per pixel" in message(err) and "RGB" not in message(err)
