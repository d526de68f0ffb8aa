"""Same work, two revisions: is a change slower? `bone fit`, `bone predict` and `bone iou` timed
on the working tree and on an earlier revision of the project, alternately, in the same run.

Each step runs the `bone` command of one revision in its own process (imports included, the
same for both), on the same data. The weights both revisions predict with are written by the
earlier revision's `bone fit`, so the newer one also shows that it reads older weights files.
The table gives the fastest of the repeats for each step and revision, and the ratio
working tree / base (below 1.00: faster).

Usage: python benchmarks/bench_revisions.py --base REV [--repeat 3] [--shape 32 512 512]
       [--workdir /tmp/bench_revisions]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export_revision(rev: str, into: Path) -> Path:
    """The files of `rev` (as committed) in `into`, without touching the working tree."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            tar.extractall(into, filter="data")
    return into


def bone(root: Path, *args: str) -> float:
    """Wall seconds of `bone ARGS` run with the package found at `root`."""
    env = dict(os.environ, PYTHONPATH=str(root), QT_QPA_PLATFORM="offscreen")
    command = [sys.executable, "-c", "import sys; from bone_apps.cli import main; sys.exit(main())", *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"bone {' '.join(args)} failed in {root}:\n{tail}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_revisions"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    # Only this run's own scratch folder is ever removed, never the folder the user named.
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    try:
        base = export_revision(args.base, work / "base")
        roots = {"base": base, "tree": ROOT}
        data = work / "data"
        bone(ROOT, "synth", str(data), "--scans", "3", "--shape", *map(str, args.shape))
        scan = sorted((data / "scans").iterdir())[0]
        reference = data / "masks" / scan.name
        fit_args = ["--data", str(data), "--epochs", "1", "--patch", "128", "--batch", "8",
                    "--init", "random", "--device", "cpu", "--val-slices", "4", "--no-profile"]
        bone(base, "fit", *fit_args, "--out", str(work / "model"))
        weights = work / "model" / "model.pth"

        times: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.repeat):
            for name, root in roots.items():
                out = work / f"{name}-{repeat}"
                steps = {
                    "bone fit (1 epoch)": ["fit", *fit_args, "--out", str(out / "fit")],
                    "bone predict": ["predict", str(scan), "--weights", str(weights), "--out",
                                     str(out / "labels"), "--device", "cpu"],
                    "bone iou": ["iou", str(reference), str(out / "labels"), "--device", "cpu"],
                }
                for step, step_args in steps.items():
                    times.setdefault((step, name), []).append(bone(root, *step_args))
                shutil.rmtree(out)

        print(f"\n{' x '.join(map(str, args.shape))} scans, fastest of {args.repeat}; base = {args.base}")
        print("| step | base (s) | working tree (s) | ratio |\n|---|---|---|---|")
        for step in ("bone fit (1 epoch)", "bone predict", "bone iou"):
            old, new = min(times[(step, "base")]), min(times[(step, "tree")])
            print(f"| {step} | {old:.2f} | {new:.2f} | {new / old:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
