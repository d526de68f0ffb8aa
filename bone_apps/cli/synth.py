"""`bone synth`: write sample scans and masks."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="write sample micro-CT scans of long bones and their Bone-Pores masks",
        description="Write OUT/scans/<id>/ and OUT/masks/<id>/ folders of TIFF slices "
                    "(labels: 0 background, 1 bone, 2 pores).")
    parser.add_argument("out", type=Path, help="dataset folder to create")
    parser.add_argument("--scans", type=int, default=4, help="number of scans (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 128, 128),
                        metavar=("Z", "Y", "X"), help="slices, height, width (default 32 128 128)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing scans")
    parser.set_defaults(func=run, command="synth")


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.data.synthetic import write_sample_dataset

    ids = write_sample_dataset(args.out, args.scans, args.seed, tuple(args.shape), args.overwrite)
    z, y, x = args.shape
    print(f"wrote {len(ids)} scans of {z}x{y}x{x} voxels to {args.out}/scans and masks to "
          f"{args.out}/masks: {', '.join(ids)}")
    return 0
