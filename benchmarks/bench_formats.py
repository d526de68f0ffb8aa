"""Reading a scan slice by slice in every format, against a folder of TIFF slices of the same data.

The scan (default 64 slices of 1024x1024 uint16, a smooth field with noise, which compresses
as little as a micro-CT reconstruction) is written by each format's own library: TIFF folders
(tifffile; uncompressed, the fastest TIFF there is, and zstd), OME-Zarr 0.4 and 0.5 (ome-zarr-py
with its default zstd, chunks one slice deep and 16 deep, Blosc-LZ4, uncompressed), OME-Zarr as bone_apps
writes its outputs, NIfTI (nibabel, .nii and .nii.gz) and HDF5 (h5py, gzip). Each is opened with
`open_volume` and read slice by slice in order, as prediction, statistics and scoring read
scans (page cache warm; best of --repeats). The table gives milliseconds per slice and the
ratio to the uncompressed TIFF folder.

Usage: python benchmarks/bench_formats.py [--slices 64] [--size 1024] [--repeats 3]
       [--workdir DIR (a scratch folder is made inside and removed)]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_scan(slices: int, size: int) -> np.ndarray:
    """A smooth 16-bit field with noise (compresses about as well as a reconstruction)."""
    rng = np.random.default_rng(0)
    coarse = rng.random((slices // 8 + 2, size // 64 + 2, size // 64 + 2), dtype=np.float32)
    zz = np.linspace(0, coarse.shape[0] - 1.001, slices)
    yy = np.linspace(0, coarse.shape[1] - 1.001, size)
    field = np.empty((slices, size, size), dtype=np.uint16)
    for z in range(slices):
        plane = coarse[int(zz[z])]
        plane = plane[yy.astype(int)][:, yy.astype(int)]
        noise = rng.normal(0, 0.02, (size, size)).astype(np.float32)
        field[z] = np.clip((plane + noise) * 40000 + 5000, 0, 65535).astype(np.uint16)
    return field


def write_all(scan: np.ndarray, folder: Path) -> dict[str, Path]:
    """The scan in each format, written by the format's own library (the last one by bone_apps)."""
    import h5py
    import nibabel as nib
    import tifffile
    import zarr
    from numcodecs import Blosc
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    from bone_apps.core.io.writer import write_volume

    paths: dict[str, Path] = {}
    _, size, _ = scan.shape
    tile = min(size, 1024)
    for compression in (None, "zstd"):
        tiffs = folder / f"tiff_{compression}"
        tiffs.mkdir(parents=True)
        for z, plane in enumerate(scan):
            tifffile.imwrite(tiffs / f"slice_{z:04d}.tif", plane, compression=compression)
        paths[f"TIFF folder, {compression or 'uncompressed'}"] = tiffs
    # ome-zarr-py's defaults (zstd), chunks one slice deep or 16 deep; Blosc-LZ4; and no
    # compression, like the uncompressed TIFF folder (the same bytes on disk).
    zarrs = [(FormatV04(), 1, "zstd"), (FormatV04(), 16, "zstd"), (FormatV05(), 1, "zstd"),
             (FormatV04(), 1, Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)),
             (FormatV04(), 1, None)]
    for fmt, depth, compressor in zarrs:
        codec = compressor if isinstance(compressor, str) else "uncompressed" if compressor is None else (
            "blosc-lz4")
        name = f"OME-Zarr {fmt.version}, {codec}, {depth}x{tile}^2"
        store = folder / f"{len(paths)}.ome.zarr"
        group = zarr.open_group(str(store), mode="w", zarr_format=fmt.zarr_format)
        options = {"chunks": (depth, tile, tile),
                   **({} if compressor == "zstd" else {"compressor": compressor})}
        write_image(scan, group, axes="zyx", fmt=fmt, scale_factors=(), storage_options=options)
        paths[name] = store
    paths["OME-Zarr as bone_apps writes it"] = write_volume(folder / "bone_apps.ome.zarr", scan)
    image = nib.Nifti1Image(scan.transpose(2, 1, 0), np.eye(4))
    for suffix in (".nii", ".nii.gz"):
        paths[f"NIfTI {suffix}"] = folder / f"scan{suffix}"
        nib.save(image, paths[f"NIfTI {suffix}"])
    h5 = folder / "scan.h5"
    with h5py.File(h5, "w") as handle:
        handle.create_dataset("data", data=scan, chunks=(1, size, size), compression="gzip",
                              compression_opts=1)
    paths["HDF5, gzip, 1 slice per chunk"] = h5
    return paths


def read_all(path: Path, expected: np.ndarray) -> float:
    """Seconds to open `path` and read every slice in order (checked against the scan)."""
    from bone_apps.core.io.volume import open_volume

    started = time.perf_counter()
    with open_volume(path) as volume:
        for z in range(volume.shape[0]):
            plane = volume.read_slice(z)
            if z % 16 == 0 and not np.array_equal(plane, expected[z]):
                raise AssertionError(f"{path}: slice {z} differs from the scan")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where a new scratch folder is made (and removed afterwards)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # A fresh folder of our own: only what this run wrote is ever removed.
    scratch = Path(tempfile.mkdtemp(prefix="bench_formats-", dir=args.workdir))
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> None:
    scan = make_scan(args.slices, args.size)
    paths = write_all(scan, scratch)
    times = {}
    for name, path in paths.items():
        read_all(path, scan)  # warm the page cache (and the imports)
        times[name] = min(read_all(path, scan) for _ in range(args.repeats)) / args.slices
    base = times["TIFF folder, uncompressed"]
    size_mb = {name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
               / 1e6 for name, p in paths.items()}
    print(f"\nReading {args.slices} slices of {args.size}x{args.size} uint16 in order, "
          f"best of {args.repeats} (page cache warm)")
    print(f"{'format':<40}{'MB on disk':>11}{'ms/slice':>10}{'vs TIFF':>9}")
    for name, seconds in times.items():
        print(f"{name:<40}{size_mb[name]:>11.0f}{seconds * 1e3:>10.2f}{seconds / base:>8.2f}x")


if __name__ == "__main__":
    main()
