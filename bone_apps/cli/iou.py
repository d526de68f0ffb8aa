"""`bone iou`: score a predicted label stack against a reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_PROGRESS_MIN_SLICES = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    from bone_apps.core.io.formats import LEVEL_HELP, VOLUME_HELP
    from bone_apps.core.jobs.devices import DEVICE_CHOICES, DEVICE_FORMS

    parser = subparsers.add_parser(
        "iou", help="class-wise and mean IoU and Dice of a prediction against a reference",
        description="Compare two label stacks voxel by voxel and print IoU and Dice per class and "
                    f"their means. Each is {VOLUME_HELP}; the two may differ in format.")
    parser.add_argument("reference", type=Path, help="reference (ground-truth) mask")
    parser.add_argument("prediction", type=Path, help="predicted mask")
    parser.add_argument("--level", type=int, metavar="N", help=LEVEL_HELP)
    parser.add_argument("--class-names", type=lambda s: [n.strip() for n in s.split(",")],
                        help="comma-separated names of labels 0, 1, ... (declares the classes), "
                             "e.g. background,bone,pores")
    parser.add_argument("--ignore-background", action="store_true",
                        help="leave label 0 out of the means")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json file (only one bone_apps wrote)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, metavar="|".join(DEVICE_FORMS),
                        help="where to count (default auto: a GPU when present; several GPUs or "
                             "cuda:all: the first)")
    parser.set_defaults(func=run, command="iou")


def format_table(result) -> str:
    """The scores as an aligned text table."""
    def num(value: float | None) -> str:
        return "absent" if value is None else f"{value:.4f}"

    rows = [("label", "class", "IoU", "Dice", "reference", "predicted")]
    for c in result.classes:
        rows.append((str(c.label), c.name, num(c.iou), num(c.dice),
                     f"{c.reference_voxels:,}", f"{c.predicted_voxels:,}"))
    scope = "classes present, background left out" if result.ignore_background else "classes present"
    rows.append(("", f"mean ({scope})", num(result.mean_iou), num(result.mean_dice),
                 f"{result.voxels:,}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i != 1 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bone_apps.cli import run_with_bar
    from bone_apps.core.io.formats import at_level
    from bone_apps.core.io.outputs import check_target
    from bone_apps.core.io.volume import open_volume
    from bone_apps.core.score.scoring import score_stacks, write_result_json

    if args.json:
        check_target(args.json, args.overwrite)  # before the work, not after

    reference = open_volume(at_level(args.reference, args.level), role="mask")
    prediction = open_volume(at_level(args.prediction, args.level), role="mask")
    for volume in (reference, prediction):
        if volume.skipped_note():
            print(f"note: {volume.skipped_note()}", file=sys.stderr)
    job = score_stacks(reference, prediction, class_names=args.class_names,
                       ignore_background=args.ignore_background, device=args.device)
    result = run_with_bar(job, "slice", "scoring", min_total=_PROGRESS_MIN_SLICES)
    print(f"reference:  {args.reference}\nprediction: {args.prediction}\n")
    print(format_table(result))
    if args.json:
        write_result_json(result, args.json, args.reference, args.prediction,
                          overwrite=args.overwrite)
        print(f"\nscores written to {args.json}")
    return 0
