"""Tiles, patches, augmentation and the batch data path of fitting."""

from __future__ import annotations

import pickle
from itertools import combinations

import numpy as np
import pytest

from bone_apps.core.data.augment import (
    AugmentConfig,
    Geometry,
    apply_geometry,
    draw_geometry,
    draw_intensity,
)
from bone_apps.core.data.normalize import compute_stats
from bone_apps.core.data.sampling import (
    Dims,
    PatchBatches,
    PatchLayout,
    ScanSource,
    overlap_fraction,
    patch_capacity,
    sample_positions,
    slab_starts,
)
from bone_apps.core.errors import FitConfigError
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume

NO_INTENSITY = AugmentConfig(p_brightness=0.0, p_contrast=0.0)


def _sources(root, scans: dict) -> list[ScanSource]:
    """Write {id: (image, mask)} as scan/mask folders and describe them."""
    out = []
    (root / "scans").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for ident, (image, mask) in scans.items():
        write_volume(root / "scans" / ident, image)
        write_volume(root / "masks" / ident, mask)
        volume = open_volume(root / "scans" / ident)
        out.append(ScanSource(ident, volume.path, root / "masks" / ident, volume.shape,
                              compute_stats(volume)))
    return out


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Two scans whose pixel values encode (z, y, x); mask = value % 3."""
    root = tmp_path_factory.mktemp("coded")
    scans = {}
    for k, (z, y, x) in enumerate([(6, 48, 40), (5, 40, 56)]):
        value = (np.arange(z * y * x, dtype=np.int64) + k * 10000).reshape(z, y, x).astype(np.uint16)
        scans[f"s{k}"] = (value, (value % 3).astype(np.uint8))
    return _sources(root, scans)


# Positions -------------------------------------------------------------------------------------


def test_patch_overlap_never_exceeds_the_bound():
    rng = np.random.default_rng(0)
    for _ in range(300):
        patch = int(rng.integers(4, 40))
        height, width = (int(v) for v in rng.integers(patch // 2, 4 * patch, 2))
        bound = float(rng.choice([0.0, 0.1, 0.25, 0.5, 0.9]))
        capacity = patch_capacity(height, width, patch, bound)
        count = int(min(capacity, rng.integers(1, 12)))
        positions = sample_positions(height, width, patch, count, bound, rng)
        assert len(positions) == count
        for y, x in positions:
            assert 0 <= y <= max(height, patch) - patch and 0 <= x <= max(width, patch) - patch
        for a, b in combinations(positions, 2):
            assert overlap_fraction(a, b, patch) <= bound + 1e-12


def test_tight_layouts_fall_back_to_a_grid():
    rng = np.random.default_rng(1)
    # 64 px tile, 32 px patches, no overlap allowed: exactly the four quadrants fit.
    assert patch_capacity(64, 64, 32, 0.0) == 4
    positions = sample_positions(64, 64, 32, 4, 0.0, rng)
    assert sorted(positions) == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_slab_starts_cover_the_scan():
    assert slab_starts(10, 4) == [0, 4, 6]
    assert slab_starts(8, 4) == [0, 4]
    assert slab_starts(3, 4) == [0]


# Augmentation ----------------------------------------------------------------------------------


def test_augmentation_frequencies_match_the_paper():
    aug = AugmentConfig()
    n = 30000
    geometry = np.array([draw_geometry(np.random.default_rng([5, i]), aug) for i in range(n)])
    freq = {g: float(np.mean(geometry == g)) for g in Geometry}
    tol = 0.012  # about 4.5 standard deviations at n = 30,000
    assert freq[Geometry.HFLIP] == pytest.approx(0.166, abs=tol)
    assert freq[Geometry.VFLIP] == pytest.approx(0.166, abs=tol)
    assert freq[Geometry.NONE] == pytest.approx(0.168, abs=tol)
    for rot in (Geometry.ROT90, Geometry.ROT180, Geometry.ROT270):
        assert freq[rot] == pytest.approx(0.5 / 3, abs=tol)
    draws = np.array([draw_intensity(np.random.default_rng([6, i]), aug) for i in range(n)])
    shifted, scaled = draws[:, 0] != 0, draws[:, 1] != 1
    assert shifted.mean() == pytest.approx(0.4, abs=tol)
    assert scaled.mean() == pytest.approx(0.4, abs=tol)
    assert (shifted & scaled).mean() == pytest.approx(0.16, abs=tol)  # independent
    assert np.abs(draws[shifted, 0]).max() <= 0.15
    assert draws[scaled, 1].min() >= 0.75 and draws[scaled, 1].max() <= 1.25


def test_probabilities_are_configurable_and_checked():
    only_flips = AugmentConfig(p_hflip=0.5, p_vflip=0.5, p_rotate=0.0)
    drawn = {draw_geometry(np.random.default_rng(i), only_flips) for i in range(200)}
    assert drawn == {Geometry.HFLIP, Geometry.VFLIP}
    with pytest.raises(FitConfigError, match="more than 1"):
        AugmentConfig(p_hflip=0.6, p_vflip=0.6)
    with pytest.raises(FitConfigError, match="between 0 and 1"):
        AugmentConfig(p_brightness=1.5)


def test_geometry_transforms():
    a = np.arange(9).reshape(3, 3)
    assert (apply_geometry(a, Geometry.HFLIP) == a[:, ::-1]).all()
    assert (apply_geometry(a, Geometry.VFLIP) == a[::-1]).all()
    assert (apply_geometry(a, Geometry.ROT180) == a[::-1, ::-1]).all()
    assert (apply_geometry(a, Geometry.NONE) == a).all()


# Batches ---------------------------------------------------------------------------------------


def _layout(**changes) -> PatchLayout:
    values = dict(dims=Dims.D2, patch=16, patches_per_tile=4, max_overlap=0.5)
    values.update(changes)
    return PatchLayout(**values)


def _recover(image: np.ndarray, source: ScanSource) -> np.ndarray:
    """Raw values back from min-max-full normalized ones."""
    s = source.stats
    return np.rint(image * (s.max - s.min) + s.min).astype(np.int64)


def test_image_and_mask_get_the_same_geometry(coded):
    ds = PatchBatches(coded, _layout(), "minmax-full", 8, seed=3, train=True, augment=NO_INTENSITY)
    flipped = 0
    for b in range(ds.batches_per_epoch(0)):
        image, mask = ds[(0, b)]
        for j, (tile, _) in enumerate(ds.plan(0)[b]):
            raw = _recover(image[j, 0], coded[int(ds.tile_scan[tile])])
            assert (raw % 3 == mask[j]).all()
            flipped += not (np.diff(raw, axis=1) == 1).all()
    assert flipped > 0  # augmentation did change some patches


def test_every_training_tile_is_visited_once_per_epoch(coded):
    ds = PatchBatches(coded, _layout(), "zscore", 5, seed=3, train=True, augment=AugmentConfig())
    assert ds.tiles == 11
    orders = []
    for epoch in range(3):
        rows = np.concatenate(ds.plan(epoch))
        assert len({tuple(r) for r in rows}) == len(rows) == ds.patches_per_epoch
        for tile in range(ds.tiles):
            assert (rows[:, 0] == tile).sum() == ds.tile_patches[tile]
        orders.append(rows[:, 0].tolist())
    assert orders[0] != orders[1]
    # Every process computes the same plan (workers, ranks, a resumed run).
    twin = pickle.loads(pickle.dumps(ds))
    assert all((a == b).all() for a, b in zip(twin.plan(2), ds.plan(2)))
    assert all((a == b).all() for a, b in zip(ds[(2, 1)], twin[(2, 1)]))


def test_validation_patches_are_fixed(coded):
    ds = PatchBatches(coded, _layout(), "zscore", 8, seed=3, train=False,
                      augment=AugmentConfig())
    assert ds.augment is None
    first = [ds[(0, b)] for b in range(ds.batches_per_epoch())]
    again = [ds[(7, b)] for b in range(ds.batches_per_epoch())]
    for (i0, m0), (i1, m1) in zip(first, again):
        assert (i0 == i1).all() and (m0 == m1).all()


def test_ddp_ranks_share_the_tiles_and_step_together(coded):
    ranks = [PatchBatches(coded, _layout(), "zscore", 3, seed=3, train=True, rank=r, world=2)
             for r in range(2)]
    assert ranks[0].batches_per_epoch(1) == ranks[1].batches_per_epoch(1)
    tiles = set()
    for ds in ranks:
        tiles |= {int(t) for batch in ds.plan(1) for t in batch[:, 0]}
    assert tiles == set(range(ranks[0].tiles))
    vals = [PatchBatches(coded, _layout(), "zscore", 3, seed=3, train=False, rank=r, world=2)
            for r in range(2)]
    single = PatchBatches(coded, _layout(), "zscore", 3, seed=3, train=False)
    assert sum(v.batches_per_epoch() for v in vals) == single.batches_per_epoch()


def test_small_tiles_are_padded(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (2, 20, 24)).astype(np.uint16)
    mask = np.ones((2, 20, 24), np.uint8)
    sources = _sources(tmp_path, {"small": (image, mask)})
    ds = PatchBatches(sources, _layout(patch=32), "minmax-full", 4, seed=0, train=False)
    assert ds.tile_patches.tolist() == [1, 1]  # a padded tile holds one 32 px patch
    got_image, got_mask = ds[(0, 0)]
    pads = ((6, 6), (4, 4))
    np.testing.assert_array_equal(_recover(got_image[0, 0], sources[0]),
                                  np.pad(image[0], pads, mode="reflect"))
    np.testing.assert_array_equal(got_mask[0], np.pad(mask[0], pads))


def test_25d_stacks_neighbours_with_replicated_edges(tmp_path):
    image = np.stack([np.full((16, 16), z * 10, np.uint16) for z in range(5)])
    sources = _sources(tmp_path, {"z": (image, np.zeros_like(image, np.uint8))})
    ds = PatchBatches(sources, _layout(dims=Dims.D25, context=2, patches_per_tile=1), "minmax-full",
                      5, seed=0, train=False)
    got, _ = ds[(0, 0)]
    assert got.shape == (5, 5, 16, 16)
    channels = [[int(v) for v in _recover(got[t, :, 0, 0], sources[0])] for t in range(5)]
    assert channels[0] == [0, 0, 0, 10, 20] and channels[4] == [20, 30, 40, 40, 40]


def test_3d_batches_are_slabs(coded):
    ds = PatchBatches(coded, _layout(dims=Dims.D3, patch_depth=4, patches_per_tile=2), "minmax-full",
                      2, seed=0, train=True, augment=NO_INTENSITY)
    image, mask = ds[(0, 0)]
    assert image.shape == (2, 1, 4, 16, 16) and mask.shape == (2, 4, 16, 16)
    for j, (tile, _) in enumerate(ds.plan(0)[0]):
        raw = _recover(image[j, 0], coded[int(ds.tile_scan[tile])])
        assert (raw % 3 == mask[j]).all()


def test_loader_workers_give_the_same_batches_as_the_main_process(coded):
    from bone_apps.core.data.loader import TRAIN, VAL, FitBatches, FitSampler, make_loader

    train = PatchBatches(coded, _layout(), "zscore", 8, seed=3, train=True, augment=AugmentConfig())
    val = PatchBatches(coded, _layout(), "zscore", 8, seed=3, train=False)
    dataset = FitBatches(train, val)
    sampler = FitSampler(dataset)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert keys[0] == (TRAIN, 1, 0) and keys[-1][0] == VAL
    expected = [dataset[k] for k in keys]
    loader = make_loader(dataset, sampler, workers=2, seed=3, pin_memory=False)
    for (phase, b, image, mask), (p0, b0, i0, m0) in zip(loader, expected):
        assert (phase, b) == (p0, b0)
        assert (image == i0).all() and (mask == m0).all()
    sampler.set_epoch(1, VAL, 1)  # a resumed epoch starts where it stopped
    assert list(sampler)[0] == (VAL, 1, 1)
