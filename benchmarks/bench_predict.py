"""Prediction benchmark: `bone predict` vs a MONAI sliding-window script vs the forward passes alone.

Same model (U-Net / ResNet-18, random init, 3 classes, saved as a weights file), same uint16
scan of 1024x1024 slices on disk, chunk 512, overlap 0.25, CPU. Each variant runs in its own
process; wall time is measured around the process (start-up and imports included, the same for
all), peak RSS is the process's own high-water mark (getrusage).

  1. bone predict: `bone predict SCAN --weights W --out OUT --device cpu`, disk to disk
     (statistics, normalization, merge, labels, report), automatic batch.
  2. MONAI: a user script that reads the slices, normalizes them with the scan's mean and
     standard deviation, runs `monai.inferers.sliding_window_inference` per slice and keeps
     the probability volume (3 x Z x Y x X float32) in RAM, then labels and writes it.
  3. floor: the model's forward passes alone over the same number of windows, in memory.

MONAI and the floor use the batch bone predict chose. Targets: wall <= MONAI's and <= 1.10x
the floor; peak RSS <= MONAI's at the smallest slice count and growing < 5 % from the
smallest to the largest.

Usage: python benchmarks/bench_predict.py [--slices 16 64] [--size 1024] [--workdir /tmp/bench_predict]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHUNK, OVERLAP, CLASSES = 512, 0.25, 3


# ----------------------------------------------------------------------------------------------
# Variants (each runs in a child process: `bench_predict.py --child NAME ...`)


def child_weights(args: argparse.Namespace) -> dict:
    import torch

    from bone_apps.core.model.models import build_model, required_multiple
    from bone_apps.core.model.weights import save_weights

    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", 1, CLASSES)
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": CLASSES,
            "class_names": ["background", "bone", "pores"], "patch_size": 256, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": required_multiple(model, "2d")}
    save_weights(Path(args.weights), model, meta)
    return {}


def child_predict(args: argparse.Namespace) -> dict:
    from bone_apps.cli import main

    report = Path(args.out).with_suffix(".json")
    code = main(["predict", args.scan, "--weights", args.weights, "--out", args.out, "--device", "cpu",
                 "--chunk", str(CHUNK), "--overlap", str(OVERLAP), "--overwrite", "--report", str(report)])
    if code != 0:
        raise SystemExit(code)
    data = json.loads(report.read_text())
    return {"batch": data["benchmark"]["batch"], "model_s": data["benchmark"]["model_s"]}


def _load_model(weights: str):
    import segmentation_models_pytorch as smp
    import torch

    payload = torch.load(weights, map_location="cpu", weights_only=True)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=CLASSES)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def child_monai(args: argparse.Namespace) -> dict:
    import tifffile
    import torch
    from monai.inferers import sliding_window_inference

    model = _load_model(args.weights)
    files = sorted(Path(args.scan).glob("*.tif"))
    volume = np.stack([tifffile.imread(f) for f in files])
    mean = float(np.mean([s.mean(dtype=np.float64) for s in volume]))
    std = float(np.sqrt(np.mean([((s - mean) ** 2).mean(dtype=np.float64) for s in volume])))
    probs = np.empty((CLASSES, *volume.shape), dtype=np.float32)
    with torch.no_grad():
        for z, plane in enumerate(volume):
            x = torch.from_numpy(((plane - mean) / std).astype(np.float32))[None, None]
            logits = sliding_window_inference(x, (CHUNK, CHUNK), args.batch, model, overlap=OVERLAP,
                                              mode="constant")
            probs[:, z] = torch.softmax(logits, 1)[0].numpy()
    labels = probs.argmax(0).astype(np.uint8)
    labels[probs.max(0) < 0.5] = 0
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    for f, plane in zip(files, labels):
        tifffile.imwrite(out / f.name, plane)
    return {}


def child_floor(args: argparse.Namespace) -> dict:
    import torch

    from bone_apps.core.predict.windows import window_grid

    model = _load_model(args.weights)
    windows = len(window_grid((args.size, args.size), (CHUNK, CHUNK), OVERLAP)) * args.slices[0]
    x = torch.randn((args.batch, 1, CHUNK, CHUNK), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, windows, args.batch):
            torch.softmax(model(x[: min(args.batch, windows - i)]), 1)
    return {"model_s": time.perf_counter() - start}


CHILDREN = {"weights": child_weights, "predict": child_predict, "monai": child_monai, "floor": child_floor}


def run_child(name: str, **options) -> dict:
    argv = [sys.executable, __file__, "--child", name]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    env = {**os.environ, "BONE_APPS_CACHE": str(Path(options.get("workdir", "/tmp")) / "cache")}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


# ----------------------------------------------------------------------------------------------
# Data


def make_scan(folder: Path, slices: int, size: int, source: Path | None = None) -> None:
    """uint16 slices of sample long bones; a larger scan repeats the first one's files (hard links)."""
    import tifffile

    from bone_apps.core.data.synthetic import make_sample_scan

    folder.mkdir(parents=True)
    if source is not None:
        files = sorted(source.iterdir())
        for z in range(slices):
            os.link(files[z % len(files)], folder / f"scan_{z:04d}.tif")
        return
    sample = make_sample_scan((4, size, size), np.random.default_rng(0), bits=16)
    for z in range(slices):
        tifffile.imwrite(folder / f"scan_{z:04d}.tif", np.roll(sample.scan[z % 4], 3 * z, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_predict"))
    parser.add_argument("--variants", default="predict,monai,floor")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each variant, interleaved; the fastest is kept (shared machines)")
    parser.add_argument("--child")
    parser.add_argument("--scan")
    parser.add_argument("--weights")
    parser.add_argument("--out")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child](args)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    weights = work / "model.pth"
    run_child("weights", weights=weights, workdir=work)
    slices = sorted(args.slices)
    first = work / f"scan_{slices[0]}"
    make_scan(first, slices[0], args.size)
    for n in slices[1:]:
        make_scan(work / f"scan_{n}", n, args.size, source=first)
    variants = args.variants.split(",")
    rows: dict = {}

    def keep(key: tuple, result: dict) -> None:
        """Fastest wall of the repeats; the highest peak RSS (the conservative reading)."""
        old = rows.get(key)
        if old is not None:
            result = {**(result if result["wall_s"] < old["wall_s"] else old),
                      "peak_rss_bytes": max(result["peak_rss_bytes"], old["peak_rss_bytes"])}
        rows[key] = result

    for n in slices:
        scan = work / f"scan_{n}"
        common = {"scan": scan, "weights": weights, "workdir": work, "slices": n, "size": args.size}
        for _ in range(args.repeat):
            shutil.rmtree(work / "cache", ignore_errors=True)  # statistics computed in the timed run
            ours = run_child("predict", out=work / f"pred_{n}", **common)
            keep((n, "bone predict"), ours)
            if "monai" in variants:
                keep((n, "MONAI sliding window"),
                     run_child("monai", out=work / f"monai_{n}", batch=ours["batch"], **common))
            if "floor" in variants:
                keep((n, "forward passes (floor)"), run_child("floor", batch=ours["batch"], **common))
            print(f"... {n} slices: one round done", file=sys.stderr, flush=True)

    batch = rows[slices[0], "bone predict"]["batch"]
    print(f"\nPrediction, {args.size}x{args.size} uint16 slices, U-Net/ResNet-18, 3 classes, "
          f"chunk {CHUNK}, overlap {OVERLAP}, CPU ({os.cpu_count()} cores), batch {batch}")
    print(f"{'slices':>6}  {'variant':<24}{'wall s':>9}{'model s':>9}{'peak RSS GB':>13}{'wall / floor':>14}")
    for n in slices:
        floor = rows.get((n, "forward passes (floor)"))
        for name in ("bone predict", "MONAI sliding window", "forward passes (floor)"):
            row = rows.get((n, name))
            if row is None:
                continue
            ratio = f"{row['wall_s'] / floor['wall_s']:.3f}" if floor else "-"
            model_s = f"{row['model_s']:.1f}" if "model_s" in row else "-"
            print(f"{n:>6}  {name:<24}{row['wall_s']:>9.1f}{model_s:>9}{row['peak_rss_bytes'] / 1e9:>13.3f}"
                  f"{ratio:>14}")
    lo, hi = slices[0], slices[-1]
    ours_lo, ours_hi = rows[lo, "bone predict"], rows[hi, "bone predict"]
    growth = 100 * (ours_hi["peak_rss_bytes"] / ours_lo["peak_rss_bytes"] - 1)
    print(f"\nbone predict: peak RSS grows {growth:+.1f} % from {lo} to {hi} slices (target < 5 %)")
    for n in slices:
        ours = rows[n, "bone predict"]
        monai = rows.get((n, "MONAI sliding window"))
        floor = rows.get((n, "forward passes (floor)"))
        parts = []
        if monai:
            parts.append(f"wall / MONAI {ours['wall_s'] / monai['wall_s']:.3f} (target <= 1), "
                         f"RSS / MONAI {ours['peak_rss_bytes'] / monai['peak_rss_bytes']:.3f}")
        if floor:
            parts.append(f"wall / floor {ours['wall_s'] / floor['wall_s']:.3f} (target <= 1.10)")
        print(f"{n} slices: " + "; ".join(parts))


if __name__ == "__main__":
    main()
