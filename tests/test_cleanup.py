"""Clean-up of label masks: islands, holes and the largest piece, on masks written to TIFF."""

from __future__ import annotations

import numpy as np
import pytest

import bone_apps.cli as cli
from bone_apps.core.io.volume import VoxelSize, open_volume
from bone_apps.core.io.writer import write_volume
from bone_apps.core.predict.cleanup import CleanOptions, clean_labels, clean_mask


@pytest.fixture
def bone():
    """`bone` in-process."""
    return cli.main


def scene() -> np.ndarray:
    """Bone (1) block with a pore (2) region, specks, pockets and a detached piece."""
    mask = np.zeros((20, 24, 24), dtype=np.uint8)
    mask[2:18, 2:22, 2:14] = 1  # bone block
    mask[4:16, 4:20, 14:20] = 2  # pores beside it
    return mask


def test_small_islands_take_the_label_around_them():
    mask = scene()
    mask[10, 10, 22] = 1  # a bone speck in the background
    mask[8:10, 8:10, 16:18] = 1  # 8 voxels of bone inside the pores
    mask[6, 6, 6] = 2  # a pore voxel inside the bone
    cleaned, report = clean_labels(mask, CleanOptions(min_island=10))
    expected = scene()
    np.testing.assert_array_equal(cleaned, expected)
    assert {(s.operation, s.label, s.pieces, s.voxels) for s in report.steps} == {
        ("island", 1, 2, 9), ("island", 2, 1, 1)}
    untouched, report = clean_labels(mask, CleanOptions(min_island=8))
    assert untouched[8, 8, 16] == 1 and untouched[10, 10, 22] == 0
    assert mask[10, 10, 22] == 1  # the input array is not changed


def test_enclosed_small_holes_are_filled_and_others_left():
    mask = scene()
    mask[5:8, 5:8, 5:8] = 0  # enclosed pocket of 27 voxels
    mask[10:15, 5:10, 5:10] = 0  # enclosed pocket of 125 voxels
    mask[2:4, 2:4, 2:4] = 0  # pocket open to the background: not a hole
    mask[9:11, 10:12, 13:15] = 0  # pocket between bone and pores: not a hole of one class
    cleaned, report = clean_labels(mask, CleanOptions(fill_holes=100))
    expected = mask.copy()
    expected[5:8, 5:8, 5:8] = 1
    np.testing.assert_array_equal(cleaned, expected)
    assert [(s.operation, s.label, s.pieces, s.voxels) for s in report.steps] == [("hole", 1, 1, 27)]
    everything, _ = clean_labels(mask, CleanOptions(fill_holes=200))
    assert np.all(everything[10:15, 5:10, 5:10] == 1)
    assert np.all(everything[2:4, 2:4, 2:4] == 0) and np.all(everything[9:11, 10:12, 13:15] == 0)


def test_only_the_largest_piece_of_a_class_is_kept():
    mask = scene()
    mask[18:20, 20:24, 20:24] = 1  # a detached bone piece of 32 voxels in the background
    mask[17, 0, 0] = 2  # a detached pore voxel, not asked about
    cleaned, report = clean_labels(mask, CleanOptions(largest=(1,)))
    expected = scene()
    expected[17, 0, 0] = 2
    np.testing.assert_array_equal(cleaned, expected)
    assert [(s.operation, s.label, s.pieces, s.voxels) for s in report.steps] == [("largest", 1, 1, 32)]


def test_clean_writes_a_new_mask_and_never_touches_the_input(tmp_path, bone, capsys):
    mask = scene()
    mask[10, 10, 22] = 1
    mask[5:8, 5:8, 5:8] = 0
    write_volume(tmp_path / "mask", mask, voxel_size=VoxelSize(10, 8, 8))  # a folder of slices
    before = {p.name: p.read_bytes() for p in (tmp_path / "mask").iterdir()}
    args = ["clean", str(tmp_path / "mask"), "--out", str(tmp_path / "clean"), "--min-island", "5",
            "--fill-holes", "30", "--largest", "1"]
    assert bone(args) == 0
    printed = capsys.readouterr().out
    assert "label 1: 1 other piece removed (largest kept), 1 voxel" in printed
    assert "label 1: 1 hole filled, 27 voxels" in printed
    out = open_volume(tmp_path / "clean", role="mask")
    np.testing.assert_array_equal(out.read_slab(0, 20), scene())
    assert out.slice_names == open_volume(tmp_path / "mask").slice_names
    assert out.voxel_size == VoxelSize(10, 8, 8)
    assert {p.name: p.read_bytes() for p in (tmp_path / "mask").iterdir()} == before
    assert bone(args) == 2 and "already exists" in capsys.readouterr().err
    assert bone([*args, "--overwrite"]) == 0
    for target in (tmp_path / "mask", tmp_path / "mask" / "inside", tmp_path):
        assert bone(["clean", str(tmp_path / "mask"), "--out", str(target), "--min-island", "5",
                     "--overwrite"]) == 2
        assert "never overwritten" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "mask").iterdir()} == before
    assert bone(["clean", str(tmp_path / "mask"), "--out", str(tmp_path / "x.tif")]) == 2
    assert "no clean-up was asked for" in capsys.readouterr().err
    report = clean_mask(tmp_path / "mask", tmp_path / "one.tif", CleanOptions(min_island=5))
    assert report.output == str(tmp_path / "one.tif")
    assert open_volume(tmp_path / "one.tif", role="mask").read_slab(0, 20)[10, 10, 22] == 0
