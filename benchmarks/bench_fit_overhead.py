"""Loop overhead of fitting on the CPU: the share of fitting-loop time spent outside the
network's forward pass, backward pass and optimizer step.

Fitting-loop time is the wall time of the epochs (waiting for batches, copying, metrics,
logging, checkpoints, weights); compute time is the sum of forward + backward + step of
training batches and forward passes of validation batches, as the engine records them.

Target: < 10 % with the default loader workers. Baseline measured in the same run: the same
fit with the batches made in the main process (no workers), which is what a loop without a
parallel data path costs.

Run: python benchmarks/bench_fit_overhead.py [--epochs 2] [--patch 128] [--batch 16]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def one_fit(data: Path, out: Path, cache: Path, workers: int | None, args) -> dict:
    from bone_apps.core.fit.config import FitConfig
    from bone_apps.core.fit.loop import run_fit

    config = FitConfig(out=str(out), data=str(data), patch=args.patch, batch=args.batch,
                       epochs=args.epochs, init="random", workers=workers,
                       cache_dir=str(cache), profile=False)
    return run_fit(config).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    args = parser.parse_args()

    from bone_apps.core.data.loader import default_workers
    from bone_apps.core.data.synthetic import write_sample_dataset

    scratch = Path(tempfile.mkdtemp(prefix="bench-overhead-", dir=args.dir))
    try:
        write_sample_dataset(scratch / "data", scans=4, seed=0, shape=(16, 256, 256))
        rows = []
        for name, workers in ((f"default ({default_workers()} workers)", None),
                              ("baseline: no workers", 0)):
            s = one_fit(scratch / "data", scratch / f"run{len(rows)}", scratch / "cache", workers,
                        args)
            loop, step = s["times"]["fit_loop_s"], s["times"]["step_s"]
            rows.append((name, loop, step, (loop - step) / loop))
        print(f"U-Net ResNet-18, CPU, {args.epochs} epochs, {args.patch} px patches, batch "
              f"{args.batch}, {rows and s['patches_per_epoch']} training patches per epoch")
        print(f"{'loop':<26} {'loop s':>7} {'fwd/bwd/step s':>15} {'overhead':>9} {'vs baseline':>12}")
        base = rows[1][3]
        for name, loop, step, share in rows:
            print(f"{name:<26} {loop:>7.1f} {step:>15.1f} {100 * share:>8.1f}% "
                  f"{share / base:>11.2f}x")
        print(f"target < 10 % overhead with the default workers: "
              f"{'met' if rows[0][3] < 0.10 else 'NOT met'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
