"""Per-scan statistics (streamed, parallel, cached) and normalization."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bone_apps.core.data import normalize as norm
from bone_apps.core.data.normalize import (
    NormMethod,
    ScanStats,
    compute_stats,
    compute_stats_many,
    normalize,
    value_range,
)
from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume


def _volume(tmp_path, data, name="scan", multipage=False):
    target = tmp_path / (f"{name}.tif" if multipage else name)
    write_volume(target, data)
    return open_volume(target)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_stats_equal_numpy_on_the_whole_volume(tmp_path, dtype):
    rng = np.random.default_rng(1)
    if dtype == np.float32:
        data = rng.normal(100.0, 30.0, (7, 33, 29)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -3000), min(info.max, 60000), (7, 33, 29)).astype(dtype)
    stats = compute_stats(_volume(tmp_path, data))
    whole = data.astype(np.float64)
    assert stats.mean == pytest.approx(whole.mean(), rel=1e-12, abs=1e-9)
    assert stats.std == pytest.approx(whole.std(), rel=1e-10)
    assert stats.min == whole.min() and stats.max == whole.max()
    low, high = np.percentile(whole, [norm.P_LOW, norm.P_HIGH])
    if dtype == np.float32:  # one histogram bin of 65,536 between min and max
        tol = (whole.max() - whole.min()) / 65536
        assert abs(stats.p_low - low) <= tol and abs(stats.p_high - high) <= tol
    else:  # exact for integers
        assert stats.p_low == pytest.approx(low, abs=1e-9)
        assert stats.p_high == pytest.approx(high, abs=1e-9)


def test_stats_of_a_multipage_file_match_the_folder(tmp_path):
    data = np.random.default_rng(2).integers(0, 4000, (5, 16, 16)).astype(np.uint16)
    folder = compute_stats(_volume(tmp_path, data, "a"))
    file = compute_stats(_volume(tmp_path, data, "b", multipage=True))
    assert folder == file


def test_normalize_methods_and_ranges():
    stats = ScanStats(mean=10.0, std=2.0, min=0.0, max=100.0, p_low=5.0, p_high=45.0)
    x = np.array([0, 5, 10, 45, 100, 1000], dtype=np.uint16)
    z = normalize(x, stats, "zscore")
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, np.clip((x - 10.0) / 2.0, *norm.ZSCORE_RANGE))
    np.testing.assert_allclose(normalize(x, stats, NormMethod.MINMAX),
                               np.clip((x - 5.0) / 40.0, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(normalize(x, stats, "minmax-full"),
                               np.clip(x / 100.0, 0, 1), rtol=1e-6)
    assert value_range("zscore") == norm.ZSCORE_RANGE and value_range("minmax") == (0.0, 1.0)
    flat = ScanStats(5.0, 0.0, 5.0, 5.0, 5.0, 5.0)
    assert np.isfinite(normalize(x, flat, "zscore")).all()
    out = np.empty(x.shape, np.float32)
    assert normalize(x, stats, "zscore", out=out) is out


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(BoneAppsError, match="zscore, minmax, minmax-full"):
        NormMethod.parse("gauss")
    assert NormMethod.parse("MINMAX_FULL") is NormMethod.MINMAX_FULL


def test_stats_dict_round_trip():
    stats = ScanStats(1.5, 2.0, 0.0, 9.0, 0.5, 8.5)
    assert ScanStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_parallel_stats_equal_sequential_and_are_cached(sample_root, tmp_path, monkeypatch):
    scans = sorted((sample_root / "scans").iterdir())
    cache = tmp_path / "cache"
    seen = []
    parallel = compute_stats_many(scans, workers=2, cache_dir=cache,
                                  progress=lambda d, t: seen.append((d, t)))
    sequential = [compute_stats(open_volume(p)) for p in scans]
    assert parallel == sequential
    assert seen[0] == (0, len(scans)) and seen[-1] == (len(scans), len(scans))
    assert len(list(cache.glob("stats-*.json"))) == len(scans)

    # A rerun reads the cache: computing anything now would fail.
    def boom(path):
        raise AssertionError("recomputed a cached scan")

    monkeypatch.setattr(norm, "stats_task", boom)
    assert compute_stats_many(scans, workers=1, cache_dir=cache) == sequential


def test_cache_is_invalidated_when_the_scan_changes(tmp_path):
    data = np.full((3, 8, 8), 7, dtype=np.uint8)
    write_volume(tmp_path / "scan", data)
    cache = tmp_path / "cache"
    first = compute_stats_many([tmp_path / "scan"], workers=1, cache_dir=cache)[0]
    slice0 = sorted((tmp_path / "scan").glob("*.tif"))[0]
    write_volume(tmp_path / "new", np.full((3, 8, 8), 9, dtype=np.uint8))
    new0 = sorted((tmp_path / "new").glob("*.tif"))[0]
    os.replace(new0, slice0)  # same path, new contents and modification time
    os.utime(slice0, ns=(os.stat(slice0).st_atime_ns, os.stat(slice0).st_mtime_ns + 10**9))
    second = compute_stats_many([tmp_path / "scan"], workers=1, cache_dir=cache)[0]
    assert first.mean == 7.0 and second.mean == pytest.approx((9 + 7 + 7) / 3)


def test_a_script_without_a_main_guard_is_told_what_to_do(tmp_path):
    """Statistics run in spawned processes, which re-run the user's script: without an
    `if __name__ == "__main__":` guard the pool breaks, and the user gets one sentence saying so."""
    import subprocess
    import sys

    from bone_apps.core.data.synthetic import write_sample_dataset

    write_sample_dataset(tmp_path / "data", scans=2, seed=0, shape=(4, 32, 32))
    scans = tmp_path / "data" / "scans"
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from bone_apps.core.errors import BoneAppsError\n"
        "from bone_apps.core.data.normalize import run_volume_tasks, stats_task\n"
        f"scans = [r'{scans / 'bone_00'}', r'{scans / 'bone_01'}']\n"
        "try:\n"
        "    run_volume_tasks([(stats_task, s, 'stats') for s in scans], workers=2)\n"
        "    print('finished')\n"
        "except BoneAppsError as exc:\n"
        "    print('refused:', exc)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert "refused:" in done.stdout and '__name__ == "__main__"' in done.stdout, done.stdout


def test_statistics_report_progress_records_and_a_stop_ends_the_wait(tmp_path):
    import threading

    from bone_apps.core.errors import Cancelled
    from bone_apps.core.jobs.run import run_to_end

    paths = [_volume(tmp_path, np.full((4, 16, 16), v, np.uint8), name=f"s{v}").path for v in (1, 2)]
    seen: list = []
    work = lambda progress: compute_stats_many(paths, workers=1, progress=progress)  # noqa: E731
    stats = run_to_end(norm.stats_with_progress(work, "test-stats"), seen.append)
    assert [s.mean for s in stats] == [1.0, 2.0]
    assert seen == [norm.StatsProgress(done, 2) for done in range(3)]
    stop, release = threading.Event(), threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match="stopped"):
        run_to_end(norm.stats_with_progress(lambda progress: release.wait(5), "test-stats", stop))
    release.set()
