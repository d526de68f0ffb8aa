"""Chunk windows and the weighted-average merge: coverage, edges, weights, exact identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bone_apps.core.errors import PredictConfigError
from bone_apps.core.predict.windows import (
    AxisPlan,
    BlendMode,
    SliceAccumulator,
    check_overlap,
    plan_axis,
    window_grid,
    window_starts,
    window_weights,
)


@pytest.mark.parametrize("size", [1, 5, 31, 64, 100, 1024])
@pytest.mark.parametrize("window", [1, 4, 32, 512])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_windows_cover_every_voxel_and_end_at_the_edge(size, window, overlap):
    starts = window_starts(size, window, overlap)
    covered = np.zeros(size, dtype=int)
    for s in starts:
        covered[s:s + window] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts)) and starts[0] == 0
    if window >= size:
        assert starts == [0]
    else:
        assert starts[-1] + window == size  # the last window is shifted back, never past the edge
        step = max(1, int(window * (1 - overlap)))
        assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_window_starts_match_hand_computed_examples():
    # 1024 px, 512 px chunks, 25 % overlap: step 384, the third window shifted back to 512.
    assert window_starts(1024, 512, 0.25) == [0, 384, 512]
    assert window_starts(10, 4, 0.0) == [0, 4, 6]
    assert window_starts(8, 4, 0.75) == [0, 1, 2, 3, 4]
    assert window_grid((3, 8), (3, 4), 0.5) == [(0, 0), (0, 2), (0, 4)]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "a lot", None])
def test_overlap_outside_zero_one_is_refused_with_a_fix(bad):
    with pytest.raises(PredictConfigError, match="overlap"):
        check_overlap(bad)
    with pytest.raises(PredictConfigError):
        window_starts(100, 10, bad)


def test_plan_axis_rounds_to_the_network_multiple_and_shrinks_to_small_scans():
    assert plan_axis(1024, 512, 32, 0.25) == AxisPlan(1024, 512, 512, (0, 384, 512))
    # A chunk larger than the slice shrinks to the slice, rounded up to the multiple (padded).
    small = plan_axis(70, 512, 32, 0.25)
    assert (small.window, small.input, small.starts, small.pad) == (70, 96, (0,), 26)
    assert plan_axis(64, 512, 32, 0.25).pad == 0
    # A chunk that is not a multiple is rounded up.
    assert plan_axis(1000, 500, 32, 0.0).window == 512
    with pytest.raises(PredictConfigError):
        plan_axis(100, 0, 32, 0.0)


def test_blend_modes_parse_and_list_valid_names():
    assert BlendMode.parse("Gaussian") is BlendMode.GAUSSIAN
    with pytest.raises(PredictConfigError, match="mean, gaussian"):
        BlendMode.parse("median")


def test_gaussian_weights_peak_at_the_centre_and_stay_positive():
    w = window_weights((1, 9, 9), "gaussian")
    assert w.dtype == np.float32 and w.shape == (1, 9, 9)
    assert w[0, 4, 4] == pytest.approx(1.0) and w.min() >= 1e-3
    assert w[0, 4, 4] > w[0, 4, 0] > w[0, 0, 0]
    assert np.allclose(w, w[:, ::-1, ::-1])
    assert (window_weights((2, 3), "mean") == 1).all()


def _merge_through_windows(volume: np.ndarray, chunk: tuple[int, int, int], overlap: float,
                           blend: BlendMode) -> np.ndarray:
    """Cut `volume` (C, Z, Y, X) into windows, pass each through unchanged, merge them back."""
    channels, nz, ny, nx = volume.shape
    accumulator = SliceAccumulator(channels, (ny, nx))
    weights = torch.from_numpy(window_weights(chunk, blend)) if blend is BlendMode.GAUSSIAN else None
    out = np.empty_like(volume)
    z_done = 0
    starts = window_grid((nz, ny, nx), chunk, overlap)
    for i, (z0, y0, x0) in enumerate(starts):
        piece = torch.from_numpy(volume[:, z0:z0 + chunk[0], y0:y0 + chunk[1], x0:x0 + chunk[2]].copy())
        accumulator.add(z0, y0, x0, piece, weights)
        next_z = starts[i + 1][0] if i + 1 < len(starts) else nz
        while z_done < next_z:  # slices no later window touches are complete
            merged = accumulator.pop(z_done)
            out[:, z_done] = merged.numpy()
            accumulator.recycle(merged)
            z_done += 1
    assert z_done == nz and not accumulator.open_slices
    return out


@pytest.mark.parametrize("chunk", [(1, 4, 4), (1, 7, 5), (3, 8, 8), (4, 16, 16)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_identity_through_chunking_and_mean_merge_gives_the_input_back_exactly(chunk, overlap):
    rng = np.random.default_rng(0)
    # Integer values: sums of a few of them are exact in float32, so the mean is exact too.
    volume = rng.integers(0, 1000, (2, 9, 21, 18)).astype(np.float32)
    merged = _merge_through_windows(volume, chunk, overlap, BlendMode.MEAN)
    assert np.array_equal(merged, volume)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_identity_through_gaussian_merge_gives_the_input_back(overlap):
    volume = np.random.default_rng(1).random((3, 6, 20, 20), dtype=np.float32)
    merged = _merge_through_windows(volume, (2, 8, 8), overlap, BlendMode.GAUSSIAN)
    np.testing.assert_allclose(merged, volume, rtol=2e-6, atol=0)


def test_accumulator_keeps_only_the_slices_in_flight():
    accumulator = SliceAccumulator(1, (4, 4))
    for z in range(100):
        accumulator.add(z, 0, 0, torch.ones(1, 1, 4, 4))
        if z >= 1:
            accumulator.recycle(accumulator.pop(z - 1))
    assert accumulator.peak_open == 2
    with pytest.raises(ValueError, match="no chunk covered"):
        partial = SliceAccumulator(1, (4, 4))
        partial.add(0, 0, 0, torch.ones(1, 1, 2, 4))
        partial.pop(0)
    with pytest.raises(ValueError, match="leaves"):
        accumulator.add(0, 2, 2, torch.ones(1, 1, 4, 4))


def _empatches_avg_merge(patches: list[np.ndarray], corners: list[tuple[int, int]],
                         shape: tuple[int, int]) -> np.ndarray:
    """empatches 0.2.3's merge_patches(mode="avg"), reproduced: where the running image is 0
    the patch is copied in, elsewhere the running value and the patch are averaged pairwise."""
    merged = np.zeros(shape, dtype=np.float64)
    for patch, (y, x) in zip(patches, corners):
        h, w = patch.shape
        region = merged[y:y + h, x:x + w]
        merged[y:y + h, x:x + w] = np.where(region == 0, patch, (region + patch) / 2)
    return merged


def test_empatches_style_avg_is_not_a_mean_but_our_merge_is():
    # 8x8 ones, 4 px patches, 75 % overlap; patch i holds i + 1 (as SPEC.md describes).
    corners = window_grid((8, 8), (4, 4), 0.75)
    patches = [np.full((4, 4), i + 1.0) for i in range(len(corners))]
    theirs = _empatches_avg_merge(patches, corners, (8, 8))

    accumulator = SliceAccumulator(1, (8, 8))
    for patch, (y, x) in zip(patches, corners):
        accumulator.add(0, y, x, torch.from_numpy(patch.astype(np.float32))[None, None])
    ours = accumulator.pop(0)[0].numpy()

    true_mean = np.zeros((8, 8))
    count = np.zeros((8, 8))
    for patch, (y, x) in zip(patches, corners):
        true_mean[y:y + 4, x:x + 4] += patch
        count[y:y + 4, x:x + 4] += 1
    true_mean /= count
    assert true_mean[4, 4] == 16.0
    assert ours[4, 4] == 16.0 and np.allclose(ours, true_mean)
    # The halving gives the last patches almost all the say: 23.9 instead of 16.0 at the centre.
    assert theirs[4, 4] == pytest.approx(23.9, abs=0.05)
    # And a patch whose probabilities are exactly 0 is treated as "empty", not averaged in.
    zero_first = _empatches_avg_merge([np.zeros((4, 4)), np.ones((4, 4))], [(0, 0), (0, 0)], (4, 4))
    assert zero_first[0, 0] == 1.0  # the true mean is 0.5
