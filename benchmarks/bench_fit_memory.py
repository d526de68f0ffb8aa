"""Peak memory of a short fit over a large dataset vs a small one.

Two datasets of 1000x1000 uint16 scans with uint8 masks: ~1 GB and >= 4 GB on disk. Each fit
computes every scan's statistics (fresh cache), then runs the same number of training steps
(64 px patches, batch 8, ResNet-18 U-Net on the CPU) and is stopped there. Peak memory of
the whole process tree (main process, statistics processes, DataLoader workers) is sampled
twice a second, as the sum of resident sets (the monitor's figure; pages shared between
processes count once per process) and as the sum of proportional set sizes (Linux; shared
pages split between their processes).

Target: the large dataset's peak grows < 10 % over the small one's and stays < 3 GB (the
paper's DLFit peaked at 420 GB of RAM).

Run: python benchmarks/bench_fit_memory.py [--steps 300] [--dir /tmp]
The datasets are written to a scratch folder and deleted afterwards (about 5.3 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIZE = 1000


def write_dataset(root: Path, scans: int, slices: int) -> int:
    """Scans with smooth structure and matching masks; returns bytes on disk."""
    from bone_apps.core.io.writer import VolumeWriter

    (root / "scans").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for k in range(scans):
        rng = np.random.default_rng(k)
        names = [f"b{k}_{z:04d}.tif" for z in range(slices)]
        with VolumeWriter(root / "scans" / f"b{k:02d}", (slices, SIZE, SIZE), np.uint16, names) as sw, \
                VolumeWriter(root / "masks" / f"b{k:02d}", (slices, SIZE, SIZE), np.uint8, names) as mw:
            cy, cx = rng.uniform(300, 700, 2)
            for z in range(slices):
                r = np.hypot(yy - cy - z * 0.2, xx - cx)
                mask = np.where(r < 150, 2, np.where(r < 250, 1, 0)).astype(np.uint8)
                noise = rng.integers(0, 6000, (SIZE, SIZE), dtype=np.uint16)
                image = mask.astype(np.uint16) * 18000 + noise
                sw.write(image)
                mw.write(mask)
    return sum(f.stat().st_size for f in root.rglob("*.tif"))


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child(args: argparse.Namespace) -> None:
    """One fit in this process; prints a JSON line with the peaks."""
    import psutil
    import torch

    from bone_apps.core.fit.config import FitConfig
    from bone_apps.core.fit.loop import fit
    from bone_apps.core.fit.records import StepProgress
    from bone_apps.core.jobs.monitor import ResourceMonitor

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    me = psutil.Process()
    peak_pss = 0
    done = threading.Event()

    def sample_pss() -> None:
        nonlocal peak_pss
        while not done.wait(0.5):
            procs = [me, *me.children(recursive=True)]
            peak_pss = max(peak_pss, sum(_pss(p.pid) for p in procs))

    config = FitConfig(out=args.out, data=args.data, patch=64, batch=8, epochs=50,
                       patches_per_tile=4, init="random", cache_dir=args.cache, profile=False)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_pss, daemon=True)
    sampler.start()
    steps = 0
    t0 = time.perf_counter()
    with ResourceMonitor() as monitor:
        for event in fit(config, stop=stop):
            if isinstance(event, StepProgress) and event.phase == "train":
                steps += 1
                if steps >= args.steps:
                    stop.set()
    done.set()
    sampler.join()
    print(json.dumps({"peak_rss": monitor.peak_rss_bytes, "peak_pss": peak_pss, "steps": steps,
                      "seconds": time.perf_counter() - t0}))


def run_child(data: Path, scratch: Path, steps: int, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--out",
           str(scratch / f"run-{name}"), "--cache", str(scratch / f"cache-{name}"),
           "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    scratch = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir))
    free = shutil.disk_usage(scratch).free
    if free < 8 * 2**30:
        sys.exit(f"{scratch} has {free / 2**30:.1f} GB free; this benchmark needs about 6 GB.")
    try:
        rows = []
        for name, scans, slices in (("small", 2, 185), ("large", 8, 185)):
            t0 = time.perf_counter()
            size = write_dataset(scratch / name, scans, slices)
            made = time.perf_counter() - t0
            result = run_child(scratch / name, scratch, args.steps, name)
            rows.append((name, scans, slices, size, made, result))
            shutil.rmtree(scratch / name)  # keep the disk footprint to one dataset at a time
        print(f"short fits of {args.steps} steps (64 px, batch 8, U-Net ResNet-18, CPU), "
              "statistics of every scan computed")
        print(f"{'dataset':<8} {'scans':>5} {'on disk':>9} {'peak RSS sum':>13} {'peak PSS':>9} "
              f"{'vs small':>9} {'fit s':>6}")
        base = rows[0][5]
        for name, scans, _slices, size, _, r in rows:
            print(f"{name:<8} {scans:>5} {size / 2**30:>7.2f}GB {r['peak_rss'] / 2**30:>11.2f}GB "
                  f"{r['peak_pss'] / 2**30:>7.2f}GB {r['peak_rss'] / base['peak_rss']:>8.3f}x "
                  f"{r['seconds']:>6.0f}")
        large = rows[1][5]
        growth = large["peak_rss"] / base["peak_rss"] - 1
        print(f"growth {100 * growth:+.1f} % (target < 10 %), large peak "
              f"{large['peak_rss'] / 2**30:.2f} GB (target < 3 GB): "
              f"{'met' if growth < 0.10 and large['peak_rss'] < 3 * 2**30 else 'NOT met'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
