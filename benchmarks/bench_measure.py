"""Local thickness benchmark: bone_apps (exact sphere fitting) vs porespy's local_thickness.

A trabecular-like mask (a Gaussian-smoothed random field, |field| below its 25th percentile:
plates and rods about 8 voxels thick, BV/TV 0.25) of SIZE^3 voxels is measured by:

* bone_apps whole: core/measure/thickness.py on the whole volume in memory;
* bone_apps slabs: the same in 64-slice slabs (identical numbers, less memory);
* porespy legacy: porespy.filters.local_thickness(method="legacy"), its former default
  (25 fractional radii, one pair of distance transforms per radius);
* porespy bf (with --bf): porespy's current default, integer radii, numba.

Each method runs in its own process, so its peak RSS is its own. Tb.Th is the mean local
thickness over the structure's voxels, in voxels (porespy returns radii: doubled).
porespy is a benchmark-only optional import; bone_apps does not depend on it.

Usage: python benchmarks/bench_measure.py [--size 512] [--slab 64] [--bf] [--workdir /tmp/bench_measure]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("bone_apps whole", "bone_apps slabs", "porespy legacy", "porespy bf")


def make_mask(size: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size,) * 3, dtype=np.float32), 8.0)
    return np.abs(field) < np.quantile(np.abs(field[::4, ::4, ::4]), 0.25)


def ours(mask: np.ndarray, slab: int) -> float:
    from bone_apps.core.measure import thickness

    def read(a: int, b: int) -> np.ndarray:
        return mask[a:b]

    depth, spacing, threads = mask.shape[0], (1.0, 1.0, 1.0), os.cpu_count() or 1
    lattice = None
    if slab < depth:
        job = thickness.largest_norm(read, depth, spacing, slab, threads)
        while True:
            try:
                next(job)
            except StopIteration as done:
                lattice = thickness.Lattice(spacing, done.value)
                break
    counts = None
    for item in thickness.thickness_slabs(read, depth, spacing, slab, threads, lattice):
        if isinstance(item, thickness.ThicknessSlab):
            found = np.bincount(item.index.reshape(-1), minlength=item.lattice.norms.size)
            counts = found if counts is None else counts + found
            lattice = item.lattice
    counts[0] = 0
    return float(counts @ (2 * np.sqrt(lattice.norms)) / counts.sum())


def porespy_thickness(mask: np.ndarray, method: str) -> float:
    import porespy

    porespy.settings.tqdm["disable"] = True
    radius = porespy.filters.local_thickness(mask, method=method)
    return float(2 * radius[mask].mean())


def child(method: str, path: Path, slab: int) -> None:
    mask = np.load(path)
    start = time.perf_counter()
    if method == "bone_apps whole":
        value = ours(mask, mask.shape[0])
    elif method == "bone_apps slabs":
        value = ours(mask, slab)
    else:
        value = porespy_thickness(mask, method.split()[1])
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tb_th": value, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slab", type=int, default=64)
    parser.add_argument("--bf", action="store_true", help="also run porespy's bf method")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_measure"))
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mask, args.slab)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"mask_{args.size}.npy"
    if not path.exists():
        start = time.perf_counter()
        np.save(path, make_mask(args.size))
        print(f"made a {args.size}^3 mask in {time.perf_counter() - start:.0f} s")
    mask = np.load(path, mmap_mode="r")
    print(f"mask {args.size}^3, BV/TV {float(np.mean(mask[::2, ::2, ::2])):.3f}")
    results = {}
    for method in METHODS:
        if method == "porespy bf" and not args.bf:
            continue
        done = subprocess.run([sys.executable, __file__, "--child", method, "--mask", str(path),
                               "--slab", str(args.slab)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{method} failed:\n{done.stderr[-2000:]}")
            continue
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {method}: {results[method]['seconds']:.1f} s", flush=True)
    reference = results.get("porespy legacy")
    print(f"\n{'method':<17}{'Tb.Th (vox)':>12}{'vs porespy':>11}{'seconds':>9}{'vs porespy':>11}"
          f"{'peak RSS MB':>12}")
    for method, r in results.items():
        ratio_th = f"{r['tb_th'] / reference['tb_th']:.3f}" if reference else "-"
        ratio_s = f"{r['seconds'] / reference['seconds']:.2f}" if reference else "-"
        print(f"{method:<17}{r['tb_th']:>12.3f}{ratio_th:>11}{r['seconds']:>9.1f}{ratio_s:>11}"
              f"{r['peak_mb']:>12.0f}")


if __name__ == "__main__":
    main()
