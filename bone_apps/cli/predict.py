"""`bone predict`: label stacks from scans with a fitted model (DLPred)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path


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
    from bone_apps.core.fit.slice_validation import InferenceSettings
    from bone_apps.core.io.formats import LEVEL_HELP, VOLUME_HELP, VolumeFormat
    from bone_apps.core.jobs.devices import DEVICE_FORMS
    from bone_apps.core.predict.config import PredictConfig
    from bone_apps.core.predict.windows import BlendMode

    # Defaults are PredictConfig's; None for chunk, overlap and blend means "from the weights",
    # whose fallback for weights that say nothing is the paper's InferenceSettings.
    default = {f.name: f.default for f in fields(PredictConfig)}
    paper = InferenceSettings()
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
    parser.add_argument("--weights", type=Path, required=True, metavar="MODEL.pth",
                        help="weights file written by bone fit (.pth), or an .onnx written by bone "
                             "export (run with onnxruntime)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT",
                        help="one scan: its label stack, of the scan's kind unless the name says another "
                             "(a folder, .tif, .ome.zarr, .nii.gz, .h5; SCAN.ome.zarr/labels/NAME joins the "
                             "scan's OME-Zarr labels group); several: a folder receiving OUT/<id>")
    parser.add_argument("--format", dest="out_format", choices=[f.value for f in VolumeFormat],
                        default=default["out_format"],
                        help="format of the label stacks and probability maps (default: each scan's "
                             "own): tiff (a folder of slices, or OUT.tif), zarr (OME-Zarr with a "
                             "multiscale pyramid), nifti, hdf5")
    parser.add_argument("--level", type=int, metavar="N", help=LEVEL_HELP)
    parser.add_argument("--chunk", type=int, default=default["chunk"], metavar="N",
                        help="chunk edge in pixels (default: what the fit validated, from the weights; "
                             f"{paper.chunk} for older weights; shrunk to small slices)")
    parser.add_argument("--chunk-depth", type=int, default=default["chunk_depth"], metavar="N",
                        help="3D models: chunk depth in slices (default: the fitted patch depth)")
    parser.add_argument("--overlap", type=float, default=default["overlap"], metavar="F",
                        help="fraction of a chunk shared with its neighbour, in [0, 1) (default: from "
                             f"the weights; {paper.overlap:g} for older weights)")
    parser.add_argument("--threshold", type=float, default=default["threshold"], metavar="T",
                        help="voxels whose winning probability is below T become background "
                             f"(default {default['threshold']:g}; 0 keeps every label)")
    parser.add_argument("--blend", choices=[m.value for m in BlendMode], default=default["blend"],
                        help=f"weighting of overlapping chunks (default: from the weights; {paper.blend} "
                             "for older weights)")
    parser.add_argument("--batch", type=_batch, default=default["batch"], metavar="auto|N",
                        help="chunks per forward pass (default auto: from free GPU memory or RAM)")
    parser.add_argument("--device", default=default["device"], metavar="|".join(DEVICE_FORMS),
                        help=f"where the network runs (default {default['device']}; several GPUs: "
                             "cuda:0,1 or cuda:all)")
    parser.add_argument("--tta", action="store_true", default=default["tta"],
                        help="average over flipped copies (4x slower)")
    parser.add_argument("--probabilities", action="store_true", default=default["probabilities"],
                        help="also write each class's probability stack (uint8, 0-255) next to the labels")
    parser.add_argument("--report", type=Path, default=default["report"], metavar="FILE.json",
                        help="also write the report as JSON")
    clean = parser.add_argument_group(
        "clean-up (off unless one of these is given)",
        "Clean each label stack before it is saved, as `bone clean` would: removed voxels take the "
        "label that surrounds them most. LABEL is a value as written in the output. The labels are "
        "then held in memory (about 14 bytes per voxel); the report records the options and the "
        "voxels each class gained or lost.")
    clean.add_argument("--clean-largest", type=int, nargs="+", metavar="LABEL",
                       help="keep only the largest connected piece of these labels")
    clean.add_argument("--clean-min-island", type=int, default=0, metavar="N",
                       help="remove pieces of any non-zero label with fewer than N voxels")
    clean.add_argument("--clean-fill-holes", type=int, default=0, metavar="N",
                       help="fill background pockets enclosed by one label with fewer than N voxels")
    parser.add_argument("--overwrite", action="store_true", default=default["overwrite"],
                        help="replace existing outputs, only ones bone_apps wrote (others are "
                             "never touched)")
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
        from bone_apps.core.predict.segment import ScanCleaning, ScanStarted, SliceProgress, StatsProgress

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
    from bone_apps.core.predict.cleanup import CleanOptions
    from bone_apps.core.predict.config import PredictConfig
    from bone_apps.core.predict.segment import predict, scans_in

    if args.data is not None and args.scans:
        raise PredictConfigError("name scans or give --data ROOT, not both.")
    scans = scans_in(args.data) if args.data is not None else args.scans
    if not scans:
        raise PredictConfigError("no scan was given: name scan folders or TIFF files, or give --data ROOT.")
    scans = [at_level(scan, args.level) for scan in scans]
    config = PredictConfig(
        scans=tuple(scans), weights=args.weights, out=args.out, chunk=args.chunk,
        chunk_depth=args.chunk_depth, overlap=args.overlap, threshold=args.threshold, blend=args.blend,
        batch=args.batch, device=args.device, tta=args.tta, probabilities=args.probabilities,
        overwrite=args.overwrite, report=args.report, stats_cache=default_cache_dir(),
        clean=CleanOptions(largest=tuple(args.clean_largest or ()), min_island=args.clean_min_island,
                           fill_holes=args.clean_fill_holes),
        out_format=args.out_format)
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
