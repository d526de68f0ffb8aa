"""Loader throughput of fitting: 256 px patches per second, normalized and augmented, as
batched tensors, from page-cached folders of 1000x1000 uint16 TIFF slices.

Target: >= 2,000 patches/s with the default number of workers (the paper's dual-GPU
workstation consumed about 390 patches/s). Baseline measured in the same run: a loader that
decodes every tile whole with tifffile and crops from it (what a straightforward data path
does), with the same workers.

Run: python benchmarks/bench_fit_loader.py [--scans 4] [--slices 64] [--batches 60]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PAPER_PATCHES_PER_S = 390.0
TARGET = 2000.0


def make_dataset(root: Path, scans: int, slices: int, size: int) -> None:
    from bone_apps.core.io.writer import VolumeWriter

    rng = np.random.default_rng(0)
    (root / "scans").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for k in range(scans):
        names = [f"s{k}_{z:04d}.tif" for z in range(slices)]
        with VolumeWriter(root / "scans" / f"s{k}", (slices, size, size), np.uint16, names) as sw, \
                VolumeWriter(root / "masks" / f"s{k}", (slices, size, size), np.uint8, names) as mw:
            for _ in range(slices):
                image = rng.integers(0, 60000, (size, size), dtype=np.uint16)
                sw.write(image)
                mw.write((image // 20000).astype(np.uint8))


def page_cache(root: Path) -> None:
    for file in root.rglob("*.tif"):
        file.read_bytes()


class DecodeWholeSlices:
    """Baseline slice cache: decodes the whole slice file with tifffile on every request."""

    def get(self, volume, z):
        import tifffile

        return tifffile.imread(volume.path / volume.slice_names[z])


def measure(dataset, workers: int, batches: int) -> tuple[float, int]:
    """Patches per second through the fitting DataLoader (after the workers have started)."""
    import torch

    from bone_apps.core.data.loader import TRAIN, FitBatches, make_loader

    keys, epoch = [], 0
    while len(keys) < batches + 3:  # as many epochs as it takes
        keys += [(TRAIN, epoch, b) for b in range(dataset.batches_per_epoch(epoch))]
        epoch += 1
    loader = make_loader(FitBatches(dataset, dataset), keys[: batches + 3], workers, 42, False)
    it = iter(loader)
    for _ in range(3):  # start the workers and fill the queue
        next(it)
    patches = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        _, _, image, mask = next(it)
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        patches += image.shape[0]
    seconds = time.perf_counter() - t0
    del it, loader
    return patches / seconds, patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    args = parser.parse_args()

    from bone_apps.core.data.augment import AugmentConfig
    from bone_apps.core.data.loader import default_workers
    from bone_apps.core.data.normalize import compute_stats
    from bone_apps.core.data.sampling import Dims, PatchBatches, PatchLayout, ScanSource
    from bone_apps.core.io.volume import open_volume

    scratch = Path(tempfile.mkdtemp(prefix="bench-loader-", dir=args.dir))
    try:
        make_dataset(scratch, args.scans, args.slices, args.size)
        page_cache(scratch)
        sources = []
        for k in range(args.scans):
            scan = open_volume(scratch / "scans" / f"s{k}")
            stats = compute_stats(scan)
            sources.append(ScanSource(f"s{k}", scan.path, scratch / "masks" / f"s{k}",
                                      scan.shape, stats))
        layout = PatchLayout(Dims.D2, 256, 4, 0.5)
        dataset = PatchBatches(sources, layout, "zscore", 64, 42, True, AugmentConfig())
        workers = default_workers()
        rows = []
        rate, n = measure(dataset, workers, args.batches)
        rows.append((f"memory-mapped crops, {workers} workers (default)", rate, n))
        baseline = PatchBatches(sources, layout, "zscore", 64, 42, True, AugmentConfig())
        baseline.cache_factory = DecodeWholeSlices
        base, nb = measure(baseline, workers, max(10, args.batches // 3))
        rows.append((f"baseline: decode whole slices, {workers} workers", base, nb))
        rate0, n0 = measure(dataset, 0, max(10, args.batches // 3))
        rows.append(("memory-mapped crops, no workers", rate0, n0))
        print(f"{args.scans} scans x {args.slices} slices of {args.size}x{args.size} uint16, "
              "256 px patches, batch 64, z-score + augmentation, page-cached")
        print(f"{'loader':<52} {'patches/s':>10} {'vs baseline':>12} {'vs paper':>9}")
        for name, value, _ in rows:
            print(f"{name:<52} {value:>10.0f} {value / base:>11.2f}x "
                  f"{value / PAPER_PATCHES_PER_S:>8.1f}x")
        print(f"target >= {TARGET:.0f} patches/s with the default workers: "
              f"{'met' if rate >= TARGET else 'NOT met'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
