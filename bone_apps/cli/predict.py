"""`bone predict`: label stacks from scans with a fitted model (DLPred)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bone_apps.cli.clean import add_clean_options
from bone_apps.cli.options import add_option


def _batch(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a number of chunks") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of chunks")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from bone_apps.core.io.formats import LEVEL_HELP, VOLUME_HELP
    from bone_apps.core.options import defaults
    from bone_apps.core.predict.config import PredictConfig

    # Each PredictConfig option comes from its field (help, choices, default); None for chunk,
    # overlap and blend means "from the weights".
    default = defaults(PredictConfig)

    def add(*names: str, **overrides) -> None:
        for name in names:
            add_option(parser, PredictConfig, name, default=default[name], **overrides)

    parser = subparsers.add_parser(
        "predict", help="segment scans with a fitted model (.pth, or an exported .onnx) into label stacks",
        description="Predict a label stack for each scan: chunks are normalized like in fitting, "
                    "run through the network in batches, merged by averaging probabilities where "
                    "they overlap, labelled by the most probable class, and voxels whose winning "
                    "probability is below the threshold become background. Slices are written as "
                    "they are finished, so memory does not grow with the number of slices. "
                    "Everything about the model comes from the weights file.")
    parser.add_argument("scans", type=Path, nargs="*", metavar="SCAN",
                        help=f"scans, each {VOLUME_HELP}")
    parser.add_argument("--data", type=Path, metavar="ROOT",
                        help="predict every scan in ROOT/scans (instead of naming scans)")
    add_option(parser, PredictConfig, "weights", required=True)
    add_option(parser, PredictConfig, "out", required=True)
    add("out_format")
    parser.add_argument("--level", type=int, metavar="N", help=LEVEL_HELP)
    add("chunk", "chunk_depth", "overlap", "threshold", "blend")
    add("batch", type=_batch)
    add("device", "tta", "probabilities", "report")
    clean = parser.add_argument_group(
        "clean-up (off unless one of these is given)",
        "Clean each label stack before it is saved, as `bone clean` would: removed voxels take the "
        "label that surrounds them most. LABEL is a value as written in the output. The labels are "
        "then held in memory (about 14 bytes per voxel); the report records the options and the "
        "voxels each class gained or lost.")
    add_clean_options(clean, "clean-")
    add("overwrite")
    parser.set_defaults(func=run, command="predict")


class _Progress:
    """tqdm bars for the statistics and the slices of each scan (rank 0 only under torchrun)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.kind = ""

    def _new(self, kind: str, **kwargs) -> None:
        from tqdm import tqdm

        self.close()
        self.kind = kind
        self.bar = tqdm(file=sys.stderr, disable=None if self.enabled else True, leave=False,
                        dynamic_ncols=True, **kwargs)

    def __call__(self, event) -> None:
        from bone_apps.core.data.normalize import StatsProgress
        from bone_apps.core.predict.reports import ScanCleaning, ScanStarted, SliceProgress

        if isinstance(event, StatsProgress):
            if self.kind != "stats":
                self._new("stats", total=event.total, unit="scan", desc="statistics")
            self.bar.update(event.done - self.bar.n)
        elif isinstance(event, ScanStarted):
            label = Path(event.scan).name
            if event.scans > 1:
                label = f"[{event.index + 1}/{event.scans}] {label}"
            self._new("slices", total=event.shape[0], unit="slice", desc=label)
        elif isinstance(event, SliceProgress) and self.bar is not None:
            self.bar.update(event.done - self.bar.n)
        elif isinstance(event, ScanCleaning) and self.bar is not None:
            self.bar.set_description(f"cleaning {Path(event.output).name}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.kind = ""


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.data.normalize import default_cache_dir
    from bone_apps.core.errors import PredictConfigError
    from bone_apps.core.io.formats import at_level
    from bone_apps.core.jobs.run import run_to_end
    from bone_apps.core.options import described
    from bone_apps.core.predict.cleanup import CleanOptions
    from bone_apps.core.predict.config import PredictConfig
    from bone_apps.core.predict.output_plan import scans_in
    from bone_apps.core.predict.segment import predict

    if args.data is not None and args.scans:
        raise PredictConfigError("name scans or give --data ROOT, not both.")
    scans = scans_in(args.data) if args.data is not None else args.scans
    if not scans:
        raise PredictConfigError("no scan was given: name scan folders or TIFF files, or give --data ROOT.")
    scans = [at_level(scan, args.level) for scan in scans]
    config = PredictConfig(
        scans=tuple(scans), stats_cache=default_cache_dir(),
        clean=CleanOptions(largest=tuple(args.clean_largest or ()), min_island=args.clean_min_island,
                           fill_holes=args.clean_fill_holes),
        **{name: getattr(args, name) for name in described(PredictConfig)})
    rank = int(os.environ.get("RANK", "0") or 0)
    # The report is checked with the other outputs before any work, and written by rank 0.
    progress = _Progress(enabled=rank == 0)
    job = predict(config)
    try:
        report = run_to_end(job, progress)  # on Ctrl-C the job removes its outputs in progress
    finally:
        progress.close()
    if rank == 0:
        print(report.text())
        if args.report:
            print(f"report written to {args.report}")
    return 0
