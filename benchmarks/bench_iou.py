"""IoU benchmark: the core's counting vs torchmetrics, and `bone iou` vs just reading the stacks.

Part 1: two in-memory uint8 volumes (~200 M voxels, 3 classes, ~5 % disagreement); voxels per
second of `metrics.confusion_matrix` vs torchmetrics' MulticlassJaccardIndex (its defaults) on
the CPU. Target: >= 30x.

Part 2: `bone iou` on two uncompressed TIFF-folder stacks of >= 1 GB each vs tifffile reading
both stacks slice by slice (page cache warm for both). Target: <= 1.5x the read time, peak RSS
< 500 MB and not growing when the stacks double (the doubled stacks hard-link the same slices
twice, so they cost no extra disk).

Usage: python benchmarks/bench_iou.py [--voxels 200e6] [--gb 1.0] [--workdir /tmp/bench_iou]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def labels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    reference = rng.integers(0, 3, n, dtype=np.uint8)
    prediction = reference.copy()
    flip = rng.random(n, dtype=np.float32) < 0.05
    prediction[flip] = (prediction[flip] + rng.integers(1, 3, int(flip.sum()), dtype=np.uint8)) % 3
    return reference, prediction


def part_counting(voxels: int) -> None:
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    from bone_apps.core.score.metrics import confusion_matrix, scores_from_confusion

    reference, prediction = labels(voxels, np.random.default_rng(0))
    t0 = time.perf_counter()
    ours = scores_from_confusion(confusion_matrix(reference, prediction, 3))
    t_core = time.perf_counter() - t0
    metric = MulticlassJaccardIndex(num_classes=3, average=None)
    t0 = time.perf_counter()
    theirs = metric(torch.from_numpy(prediction), torch.from_numpy(reference)).numpy()
    t_tm = time.perf_counter() - t0
    assert np.allclose([c.iou for c in ours.classes], theirs, atol=1e-6), (ours, theirs)
    print(f"\nPart 1: counting {voxels / 1e6:.0f} M voxels in memory (CPU, 3 classes)")
    print(f"{'implementation':<34}{'seconds':>9}{'Mvox/s':>10}")
    print(f"{'bone_apps metrics.confusion_matrix':<34}{t_core:>9.3f}{voxels / t_core / 1e6:>10.0f}")
    print(f"{'torchmetrics MulticlassJaccardIndex':<34}{t_tm:>9.3f}{voxels / t_tm / 1e6:>10.1f}")
    print(f"speed-up vs torchmetrics: {t_tm / t_core:.1f}x (target >= 30x)")


def make_stack(folder: Path, slices: int, size: int, rng: np.random.Generator,
               source: Path | None = None) -> None:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:  # the same slices twice, by hard links
        files = sorted(source.iterdir())
        for i in range(slices):
            os.link(files[i % len(files)], folder / f"s_{i:05d}.tif")
        return
    reference = rng.integers(0, 3, (size, size), dtype=np.uint8)
    for i in range(slices):
        tifffile.imwrite(folder / f"s_{i:05d}.tif", np.roll(reference, i, axis=1))


def read_all(folders: list[Path]) -> float:
    import tifffile

    t0 = time.perf_counter()
    for folder in folders:
        for file in sorted(folder.iterdir()):
            tifffile.imread(file)
    return time.perf_counter() - t0


def run_bone_iou(reference: Path, prediction: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, sampled every 5 ms) of `bone iou` in its own process.

    (The kernel's ru_maxrss of a child would include this parent's memory, inherited at fork.)
    """
    import psutil

    t0 = time.perf_counter()
    process = psutil.Popen([sys.executable, "-m", "bone_apps", "iou", str(reference),
                            str(prediction), "--device", "cpu"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    if process.returncode != 0:
        raise SystemExit(f"bone iou failed on {reference}")
    return wall, peak / 2**20


def part_end_to_end(workdir: Path, gigabytes: float) -> None:
    size = 2000
    slices = int(np.ceil(gigabytes * 1e9 / (size * size)))
    rng = np.random.default_rng(1)
    ref1, pred1 = workdir / "ref1", workdir / "pred1"
    ref2, pred2 = workdir / "ref2", workdir / "pred2"
    if not ref1.exists():
        make_stack(ref1, slices, size, rng)
        make_stack(pred1, slices, size, np.random.default_rng(2))
        make_stack(ref2, 2 * slices, size, rng, source=ref1)
        make_stack(pred2, 2 * slices, size, rng, source=pred1)
    print(f"\nPart 2: `bone iou` on two folders of {slices} uncompressed 2000x2000 uint8 slices "
          f"({slices * size * size / 1e9:.2f} GB each), page cache warm")
    read_all([ref1, pred1])  # warm the page cache
    t_read = min(read_all([ref1, pred1]) for _ in range(2))
    t_iou, rss = min(run_bone_iou(ref1, pred1) for _ in range(2))
    t_read2 = read_all([ref2, pred2])
    t_iou2, rss2 = run_bone_iou(ref2, pred2)
    print(f"{'stacks':<14}{'read (s)':>10}{'bone iou (s)':>14}{'ratio':>8}{'peak RSS (MB)':>15}")
    print(f"{'2 x %.1f GB' % (slices * size * size / 1e9):<14}{t_read:>10.2f}{t_iou:>14.2f}"
          f"{t_iou / t_read:>8.2f}{rss:>15.0f}")
    print(f"{'2 x %.1f GB' % (2 * slices * size * size / 1e9):<14}{t_read2:>10.2f}{t_iou2:>14.2f}"
          f"{t_iou2 / t_read2:>8.2f}{rss2:>15.0f}")
    print(f"targets: ratio <= 1.5 (process start included); peak RSS < 500 MB; RSS growth on "
          f"doubling {100 * (rss2 / rss - 1):+.1f} %")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bone_apps", "--help"], stdout=subprocess.DEVNULL,
                   check=True)
    print(f"`bone --help` start-up: {time.perf_counter() - t0:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=float, default=200e6)
    parser.add_argument("--gb", type=float, default=1.0, help="size of each stack in part 2")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_iou"))
    parser.add_argument("--keep", action="store_true", help="keep the stacks for another run")
    args = parser.parse_args()
    try:
        part_end_to_end(args.workdir, args.gb)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    part_counting(int(args.voxels))


if __name__ == "__main__":
    main()
