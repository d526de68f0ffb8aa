"""`bone measure`: bone morphometry of a label mask in physical units."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from bone_apps.core.io.formats import LEVEL_HELP, VOLUME_HELP

    parser = subparsers.add_parser(
        "measure", help="bone morphometry of a mask in mm: BV/TV, BS/BV, Tb.Th, Tb.Sp, Tb.N, Conn.D, "
                        "cortical measures",
        description=f"Measure each label of a mask ({VOLUME_HELP}) in "
                    "physical units (Bouxsein et al. 2010): BV/TV, TV and BV; BS/BV from a "
                    "marching-cubes surface; Tb.Th and Tb.Sp by direct 3D local thickness "
                    "(Hildebrand & Rueegsegger 1997) and Tb.N = 1/(Tb.Th + Tb.Sp); Conn and Conn.D "
                    "from the Euler characteristic corrected for the edges (Odgaard & Gundersen "
                    "1993); and for cortical labels Ct.Th and the slice-by-slice Tt.Ar, Ct.Ar, "
                    "Ma.Ar. Lengths are in mm. A mask too large for memory is measured in slabs.")
    parser.add_argument("mask", type=Path, help="label mask (uint8 or uint16)")
    parser.add_argument("--label", type=int, action="append", metavar="N",
                        help="label value to measure (repeat for several; default: every label but 0)")
    parser.add_argument("--voxel-size", type=float, nargs="+", metavar="UM",
                        help="voxel size in micrometres: one value (isotropic) or three (Z Y X); "
                             "default: the one recorded in the mask's files")
    parser.add_argument("--roi", type=Path, metavar="MASK2",
                        help="region to measure: a mask of the same shape, non-zero inside (TV)")
    parser.add_argument("--level", type=int, metavar="N", help=LEVEL_HELP)
    parser.add_argument("--class-names", type=lambda s: [n.strip() for n in s.split(",")],
                        help="comma-separated names of labels 0, 1, ..., e.g. background,bone,pores; "
                             "a label named 'cortical' also gets the cortical measures")
    parser.add_argument("--cortical", type=int, action="append", metavar="N",
                        help="label that also gets the cortical measures (Ct.Th, Tt.Ar, Ct.Ar, Ma.Ar)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write one row per label as CSV")
    parser.add_argument("--maps", type=Path, metavar="DIR",
                        help="write each label's thickness and spacing maps (32-bit float TIFF, mm) "
                             "into DIR, for Fiji")
    parser.add_argument("--slab", type=int, metavar="N",
                        help="slices per slab (default: the whole mask when it fits in half the free "
                             "memory); results do not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs, only ones bone_apps wrote")
    parser.set_defaults(func=run, command="measure")


def _voxel_size(values: list[float] | None) -> tuple[float, float, float] | None:
    from bone_apps.core.measure.morphometry import MorphometryError

    if values is None:
        return None
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 3:
        return tuple(values)
    raise MorphometryError(f"--voxel-size takes one value or three (Z Y X), not {len(values)}: "
                           "give the voxel size in micrometres.")


def run(args: argparse.Namespace) -> int:
    from bone_apps.cli import run_with_bar
    from bone_apps.core.io.formats import at_level
    from bone_apps.core.io.outputs import check_target, write_json_file
    from bone_apps.core.measure.morphometry import (
        MeasureOptions,
        check_csv_target,
        measure_stacks,
        write_csv_file,
    )

    if args.json:
        check_target(args.json, args.overwrite)  # before the work, not after
    if args.csv:
        check_csv_target(args.csv, args.overwrite)
    options = MeasureOptions(
        labels=tuple(args.label or ()), class_names=tuple(args.class_names or ()),
        voxel_size_um=_voxel_size(args.voxel_size),
        roi=None if args.roi is None else at_level(args.roi, args.level),
        cortical=tuple(args.cortical or ()), slab_slices=args.slab)
    job = measure_stacks(at_level(args.mask, args.level), options, maps=args.maps, overwrite=args.overwrite)
    result = run_with_bar(job, "step", "measuring")
    z, y, x = result.voxel_size_um
    print(f"mask:       {result.mask}")
    if result.roi:
        print(f"ROI:        {result.roi}")
    print(f"voxel size: {z:g} x {y:g} x {x:g} um (z, y, x; from the {result.voxel_size_from})\n")
    print(result.table())
    if args.json:
        write_json_file(args.json, result.to_dict(), overwrite=args.overwrite)
        print(f"\nresults written to {args.json}")
    if args.csv:
        write_csv_file(args.csv, result, overwrite=args.overwrite)
        print(f"results written to {args.csv}")
    if result.maps:
        print(f"thickness maps written to {args.maps}")
    return 0
