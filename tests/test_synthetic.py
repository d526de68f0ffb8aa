"""Sample scans: Bone-Pores labels, reproducible, bone brighter than cavities, both bit depths."""

from __future__ import annotations

import numpy as np

from bone_apps.core.data.synthetic import BONE, PORES, make_sample_scan, write_sample_dataset
from bone_apps.core.io.volume import open_volume


def test_sample_scan_has_three_classes_and_bone_is_bright():
    sample = make_sample_scan((16, 96, 96), np.random.default_rng(3), hydrated=False, bits=16)
    assert sample.scan.shape == sample.mask.shape == (16, 96, 96)
    fractions = np.bincount(sample.mask.ravel(), minlength=3) / sample.mask.size
    assert fractions[BONE] > 0.01 and fractions[PORES] > 0.005 and fractions[0] > 0.5
    bone = sample.scan[sample.mask == BONE].mean()
    pores = sample.scan[sample.mask == PORES].mean()
    assert bone > 2 * pores  # a dry cavity is air: dark


def test_hydrated_cavities_are_soft_tissue_and_dtype_follows_bits():
    rng = np.random.default_rng(4)
    dry = make_sample_scan((8, 64, 64), rng, hydrated=False, bits=8)
    wet = make_sample_scan((8, 64, 64), rng, hydrated=True, bits=8)
    assert dry.scan.dtype == wet.scan.dtype == np.uint8
    background = wet.scan[wet.mask == 0].mean()
    assert wet.scan[wet.mask == PORES].mean() > background  # soft tissue is denser than air


def test_dataset_is_reproducible_and_laid_out_for_fitting(tmp_path):
    ids = write_sample_dataset(tmp_path / "a", scans=3, seed=7, shape=(6, 40, 40))
    write_sample_dataset(tmp_path / "b", scans=3, seed=7, shape=(6, 40, 40))
    assert ids == ["bone_00", "bone_01", "bone_02"]
    for sid in ids:
        a = open_volume(tmp_path / "a" / "scans" / sid).read_slab(0, 6)
        b = open_volume(tmp_path / "b" / "scans" / sid).read_slab(0, 6)
        assert np.array_equal(a, b)
        mask = open_volume(tmp_path / "a" / "masks" / sid, role="mask")
        assert mask.shape == (6, 40, 40) and mask.voxel_size is not None
    dtypes = {open_volume(tmp_path / "a" / "scans" / sid).dtype for sid in ids}
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}
