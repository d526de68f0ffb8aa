"""Scan-level split: whole scans on one side only, close to the requested fraction."""

from __future__ import annotations

import pytest

from bone_apps.core.data.split import read_split, split_scans, write_split
from bone_apps.core.errors import FitConfigError


@pytest.mark.parametrize("n", [2, 3, 5, 16, 21])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8, 0.95])
def test_no_scan_is_on_both_sides(n, fraction):
    ids = [f"scan{i}" for i in range(n)]
    split = split_scans(ids, fraction, seed=7)
    assert not set(split.train) & set(split.val)
    assert sorted(split.train + split.val) == sorted(ids)
    assert split.train and split.val
    # As close to the fraction as whole scans allow (within the one-scan-each-side limits).
    best = min(range(1, n), key=lambda k: abs(k / n - fraction))
    assert len(split.train) == best


def test_no_slice_leaks_because_slices_follow_their_scan(sample_root):
    from bone_apps.core.data.pairs import pairs_from_root

    pairs = pairs_from_root(sample_root)
    split = split_scans([p.id for p in pairs], 0.75, seed=42)
    train_slices = {(p.id, z) for p in pairs if p.id in split.train for z in range(16)}
    val_slices = {(p.id, z) for p in pairs if p.id in split.val for z in range(16)}
    assert train_slices and val_slices and not train_slices & val_slices


def test_seed_decides_and_repeats():
    ids = [f"s{i}" for i in range(10)]
    assert split_scans(ids, 0.8, 1) == split_scans(ids, 0.8, 1)
    assert {split_scans(ids, 0.8, s).val for s in range(6)} != {split_scans(ids, 0.8, 1).val}


def test_explicit_validation_scans(tmp_path):
    split = split_scans(["a", "b", "c"], val_ids=["c", "a"])
    assert split.train == ("b",) and split.val == ("a", "c")
    path = write_split(tmp_path / "split.json", split)
    assert read_split(path) == split


@pytest.mark.parametrize(("ids", "kwargs", "message"), [
    (["a"], {}, "at least two scans"),
    (["a", "a"], {}, "share an id"),
    (["a", "b"], {"train_fraction": 1.0}, "between 0 and 1"),
    (["a", "b"], {"val_ids": ["z"]}, "not among the scans"),
    (["a", "b"], {"val_ids": ["a", "b"]}, "leave at least one"),
])
def test_bad_splits_say_what_to_do(ids, kwargs, message):
    with pytest.raises(FitConfigError, match=message):
        split_scans(ids, **kwargs)
