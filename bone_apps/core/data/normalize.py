"""Per-scan intensity statistics and the normalization methods that use them.

Fitting and prediction normalize every scan with that scan's own statistics (mean and
standard deviation, or low and high intensities), so scans from different scanners and
settings meet the network on a common scale. Statistics are computed slice by slice with
float64 accumulation and a histogram for the percentiles, so a scan larger than RAM costs
one read and a few megabytes; they are cached per scan, keyed by path, size and
modification time, so a rerun skips them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from bone_apps.core.choices import Choice
from bone_apps.core.errors import BoneAppsError, OutputWriteError
from bone_apps.core.io.outputs import write_atomic
from bone_apps.core.io.volume import Volume, open_volume, source_files

# Robust min-max uses these percentiles by default: a handful of hot pixels, metal or
# ring artefacts must not squeeze the tissue into a sliver of [0, 1].
P_LOW, P_HIGH = 0.5, 99.5
# Z-score values are clipped to this range. Bone in a scan that is mostly air lies several
# standard deviations above the mean (about z = 10 when bone fills 1 % of the volume), so
# the range is wide; it only bounds outliers such as metal and the augmented brightness.
ZSCORE_RANGE = (-10.0, 10.0)
MINMAX_RANGE = (0.0, 1.0)
T = TypeVar("T")
# Float scans: the histogram for the percentiles has this many bins between min and max.
_FLOAT_BINS = 1 << 16
_CACHE_VERSION = 1


class NormMethod(Choice, what="normalization", error=BoneAppsError):
    """How scan intensities are mapped before they reach the network.

    ZSCORE: (x - mean) / std, clipped to ZSCORE_RANGE.
    MINMAX: (x - p_low) / (p_high - p_low) with the 0.5 and 99.5 percentiles, clipped to
        [0, 1]; the default min-max because one bright outlier voxel cannot compress the
        scale of the whole scan.
    MINMAX_FULL: (x - min) / (max - min), the true extremes (the paper's min-max).
    """

    ZSCORE = "zscore"
    MINMAX = "minmax"
    MINMAX_FULL = "minmax-full"



@dataclass(frozen=True)
class ScanStats:
    """Intensity statistics of one scan (float64 accumulation).

    p_low / p_high are the P_LOW and P_HIGH percentiles (NumPy's linear interpolation;
    exact for integer scans, within one histogram bin for float scans).
    """

    mean: float
    std: float
    min: float
    max: float
    p_low: float
    p_high: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ScanStats:
        return cls(**{k: float(data[k]) for k in ("mean", "std", "min", "max", "p_low", "p_high")})


def value_range(method: NormMethod | str) -> tuple[float, float]:
    """The range normalized values (and augmented ones) are clipped to."""
    return ZSCORE_RANGE if NormMethod.parse(method) is NormMethod.ZSCORE else MINMAX_RANGE


def normalize(
    array: np.ndarray, stats: ScanStats, method: NormMethod | str, out: np.ndarray | None = None,
) -> np.ndarray:
    """Map raw intensities (any shape) to float32 with a scan's statistics, clipped to
    `value_range(method)` so fitting and prediction see the same values.

    `out` (float32, same shape; may be `array` itself) receives the result.
    """
    method = NormMethod.parse(method)
    if method is NormMethod.ZSCORE:
        offset, scale = stats.mean, stats.std
    elif method is NormMethod.MINMAX:
        offset, scale = stats.p_low, stats.p_high - stats.p_low
    else:
        offset, scale = stats.min, stats.max - stats.min
    # A constant scan has no spread; map it to the bottom of the range instead of inf/nan.
    inv = 1.0 / scale if scale > 0 else 0.0
    out = np.subtract(array, np.float32(offset), dtype=np.float32, out=out)
    out *= np.float32(inv)
    low, high = value_range(method)
    np.clip(out, low, high, out=out)
    return out


# ----------------------------------------------------------------------------------------------
# Computing statistics


def _linear_percentiles(
    counts: np.ndarray, values: np.ndarray, total: int, qs: Sequence[float],
) -> list[float]:
    """Percentiles with NumPy's default (linear) interpolation from a histogram of exact
    values: `counts[i]` voxels equal `values[i]` (values ascending)."""
    cum = np.cumsum(counts)
    results = []
    for q in qs:
        rank = (total - 1) * q / 100.0
        lo, frac = int(math.floor(rank)), rank - math.floor(rank)
        # The k-th smallest value (0-based) is the first value whose cumulative count > k.
        v_lo = float(values[np.searchsorted(cum, lo, side="right")])
        v_hi = float(values[np.searchsorted(cum, min(lo + 1, total - 1), side="right")])
        results.append(v_lo + (v_hi - v_lo) * frac)
    return results


def compute_stats(volume: Volume) -> ScanStats:
    """Statistics of a whole scan, read one slice at a time.

    Mean and standard deviation combine per-slice moments in float64 (Chan's parallel
    formula, stable for billions of voxels). Percentiles come from an exact histogram of
    integer intensities, or, for float scans, a 65,536-bin histogram between min and max
    made in a second pass.
    """
    count = 0
    mean = 0.0
    m2 = 0.0
    vmin, vmax = math.inf, -math.inf
    integer = np.issubdtype(volume.dtype, np.integer)
    if integer:
        info = np.iinfo(volume.dtype)
        offset = -int(info.min)
        hist = np.zeros(int(info.max) - int(info.min) + 1, dtype=np.int64)
    for slice_ in volume.iter_slices():
        n = slice_.size
        if n == 0:
            continue
        data = slice_.astype(np.float64, copy=False).ravel()
        s_mean = float(data.mean())
        s_m2 = float(np.square(data - s_mean).sum())
        delta = s_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += s_m2 + delta * delta * count * n / total
        count = total
        vmin, vmax = min(vmin, float(data.min())), max(vmax, float(data.max()))
        if integer:
            flat = slice_.ravel()
            if offset:
                flat = flat.astype(np.int64) + offset
            hist += np.bincount(flat, minlength=hist.size)
    if count == 0:
        raise BoneAppsError(f"{volume.path} holds no voxels: choose a scan with data.")
    if integer:
        present = np.flatnonzero(hist)
        values = present.astype(np.float64) - offset
        p_low, p_high = _linear_percentiles(hist[present], values, count, (P_LOW, P_HIGH))
    else:
        p_low, p_high = _float_percentiles(volume, vmin, vmax, count)
    return ScanStats(mean=mean, std=math.sqrt(m2 / count), min=vmin, max=vmax,
                     p_low=p_low, p_high=p_high)


def _float_percentiles(volume: Volume, vmin: float, vmax: float, count: int) -> tuple[float, float]:
    if not math.isfinite(vmin) or not math.isfinite(vmax):
        raise BoneAppsError(f"{volume.path} holds NaN or infinite values: re-export the scan "
                            "with finite intensities.")
    if vmax <= vmin:
        return vmin, vmax
    hist = np.zeros(_FLOAT_BINS, dtype=np.int64)
    for slice_ in volume.iter_slices():
        h, _ = np.histogram(slice_, bins=_FLOAT_BINS, range=(vmin, vmax))
        hist += h
    centres = vmin + (np.arange(_FLOAT_BINS) + 0.5) * (vmax - vmin) / _FLOAT_BINS
    present = np.flatnonzero(hist)
    low, high = _linear_percentiles(hist[present], centres[present], count, (P_LOW, P_HIGH))
    return low, high


# ----------------------------------------------------------------------------------------------
# Many scans: parallel processes and a cache


def default_cache_dir() -> Path:
    """Where statistics are cached: $BONE_APPS_CACHE, else the user's cache folder."""
    env = os.environ.get("BONE_APPS_CACHE")
    if env:
        return Path(env).expanduser() / "stats"
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "bone_apps" / "stats"


def _fingerprint(path: Path) -> dict:
    """What identifies a scan's contents cheaply: resolved path, total bytes, newest mtime."""
    stats = [f.stat() for f in source_files(path)]
    path = path.expanduser().resolve()
    return {"path": str(path), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0), "files": len(stats)}


def _cache_file(cache_dir: Path, fingerprint: dict, kind: str) -> Path:
    key = json.dumps({**fingerprint, "kind": kind, "v": _CACHE_VERSION}, sort_keys=True)
    return cache_dir / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read_cache(file: Path) -> dict | None:
    try:
        value = json.loads(file.read_text())["value"]
        return value if isinstance(value, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: compute again


def _write_cache(file: Path, fingerprint: dict, value: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(file, json.dumps({"scan": fingerprint, "value": value}, indent=1))
    except (OSError, OutputWriteError):
        pass  # a read-only cache only costs a recomputation next time


def stats_task(path: str) -> dict:
    """Statistics of one scan as a dict (a run_volume_tasks task; top level for spawn)."""
    with open_volume(path) as volume:
        return compute_stats(volume).to_dict()


def run_volume_tasks(
    tasks: Sequence[tuple[Callable[[str], dict], Path, str]],
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Run (func, volume path, kind) tasks in parallel spawn processes with a cache.

    Each `func` is a top-level function (path string -> plain dict). A result is cached
    under `cache_dir` by kind and by the volume's path, total size and modification time,
    so an unchanged volume is never read twice.

    Args:
        tasks: what to compute, e.g. (stats function, scan path, "stats").
        workers: processes (default: one per task up to the CPU count); 1 runs in-process.
        cache_dir: cache folder; None caches nothing.
        progress: called with (done, total) as tasks finish.

    Returns:
        One dict per task, in order.
    """
    results: list[dict | None] = [None] * len(tasks)
    fingerprints: list[dict | None] = [None] * len(tasks)
    todo = []
    for i, (_, path, kind) in enumerate(tasks):
        if cache_dir is not None:
            fingerprints[i] = _fingerprint(Path(path))
            results[i] = _read_cache(_cache_file(Path(cache_dir), fingerprints[i], kind))
        if results[i] is None:
            todo.append(i)
    done = len(tasks) - len(todo)
    if progress is not None:
        progress(done, len(tasks))

    def finish(i: int, value: dict) -> None:
        nonlocal done
        results[i] = value
        if cache_dir is not None:
            file = _cache_file(Path(cache_dir), fingerprints[i], tasks[i][2])
            _write_cache(file, fingerprints[i], value)
        done += 1
        if progress is not None:
            progress(done, len(tasks))

    n_workers = min(len(todo), workers or os.cpu_count() or 1)
    if n_workers <= 1:
        for i in todo:
            finish(i, tasks[i][0](str(tasks[i][1])))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        # Spawn behaves the same on Linux, Windows and macOS, and never forks a process
        # that holds threads (the monitor, torch's pools).
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=_worker_start)
        try:
            with _interrupts_ignored():  # the workers start ignoring Ctrl-C: the parent handles it
                futures = {pool.submit(tasks[i][0], str(tasks[i][1])): i for i in todo}
            for future in as_completed(futures):
                try:
                    value = future.result()
                except BrokenProcessPool:
                    raise BoneAppsError(
                        "a statistics process stopped before it finished: when bone_apps is started "
                        "from your own Python script, put that code under `if __name__ == "
                        "\"__main__\":` (new processes run the script again); otherwise free some "
                        "memory or use fewer statistics workers.") from None
                finish(futures[future], value)
        except BaseException:
            # Stop (Ctrl-C, SIGTERM, an error): end the workers now rather than after their scans.
            # ProcessPoolExecutor.terminate_workers() only arrives in Python 3.14.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return [r for r in results if r is not None]


def _worker_start() -> None:
    """Initializer of statistics processes: no Ctrl-C of their own, no library warnings."""
    import signal

    from bone_apps.core.fit.runfiles import quiet_library_warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_library_warnings()


@contextmanager
def _interrupts_ignored():
    """Ignore SIGINT while processes start, so that they inherit the ignored disposition (a
    Ctrl-C during their start-up would otherwise print tracebacks); main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def compute_stats_many(
    paths: Sequence[Path],
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ScanStats]:
    """Statistics of many scans, in parallel worker processes, using and filling a cache.

    Args:
        paths: scan folders or multi-page files.
        workers: processes to use (default: one per scan up to the CPU count); 1 computes
            in this process.
        cache_dir: folder of cached statistics (default_cache_dir() is the usual one); None
            caches nothing.
        progress: called with (scans done, scans in all) as each finishes.

    Returns:
        One ScanStats per path, in order.
    """
    tasks = [(stats_task, Path(p), "stats") for p in paths]
    values = run_volume_tasks(tasks, workers, cache_dir, progress)
    return [ScanStats.from_dict(v) for v in values]


# ----------------------------------------------------------------------------------------------
# Statistics as progress records


@dataclass(frozen=True)
class StatsProgress:
    """Scan statistics (and, when fitting, mask checks): `done` of `total` volumes finished."""

    done: int
    total: int


def stats_with_progress(work: Callable[[Callable[[int, int], None]], T], name: str,
                        stop: threading.Event | None = None,
                        stopped: str = "the statistics were stopped.") -> Generator[StatsProgress, None, T]:
    """Run `work(progress)` in a helper thread, yielding a StatsProgress for each
    `progress(done, total)` it reports, and return its value.

    `work` is compute_stats_many, check_pairs or anything else that reports per volume. With
    `stop`, a stop request ends the wait between records (jobs.run.records_from_thread).

    Raises:
        Cancelled: `stop` was set (with the sentence `stopped`).
        Whatever `work` raises.
    """
    from bone_apps.core.jobs.run import records_from_thread

    def run(emit: Callable[[StatsProgress], None]) -> T:
        return work(lambda done, total: emit(StatsProgress(done, total)))

    return (yield from records_from_thread(run, name, stop, stopped))
