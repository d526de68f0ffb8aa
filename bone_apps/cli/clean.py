"""`bone clean`: tidy a predicted label mask (largest piece, small islands, small holes)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clean", help="clean a label mask: keep the largest piece, remove islands, fill holes",
        description="Write a cleaned copy of a label mask (the mask itself is never changed). "
                    "Removed voxels take the label that surrounds them most (background for a "
                    "speck in the air); holes are background pockets enclosed by one class. "
                    "Pieces are 26-connected, background pockets 6-connected. The mask is cleaned "
                    "in memory (about 14 bytes per voxel).")
    parser.add_argument("mask", type=Path, help="label mask (folder of TIFF slices or multi-page TIFF)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT",
                        help="cleaned mask: a folder of slices, or a .tif for one multi-page file")
    add_clean_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT, only one bone_apps wrote")
    parser.set_defaults(func=run, command="clean")


def add_clean_options(group, prefix: str = "") -> None:
    """The clean-up options (CleanOptions' fields) on `group`: `bone clean`'s, and `bone
    predict`'s with the prefix "clean-"."""
    group.add_argument(f"--{prefix}largest", type=int, nargs="+", metavar="LABEL",
                       help="keep only the largest connected piece of these labels")
    group.add_argument(f"--{prefix}min-island", type=int, default=0, metavar="N",
                       help="remove pieces of any non-zero label with fewer than N voxels")
    group.add_argument(f"--{prefix}fill-holes", type=int, default=0, metavar="N",
                       help="fill background pockets enclosed by one label with fewer than N voxels")


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.predict.cleanup import CleanOptions, clean_mask

    options = CleanOptions(largest=tuple(args.largest or ()), min_island=args.min_island,
                           fill_holes=args.fill_holes)
    report = clean_mask(args.mask, args.out, options, overwrite=args.overwrite)
    print(report.summary())
    print(f"cleaned mask written to {report.output}")
    return 0
