"""The options of one prediction run (DLPred, `bone predict`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bone_apps.core.choices import parse_choice
from bone_apps.core.errors import PredictConfigError
from bone_apps.core.io.formats import VolumeFormat
from bone_apps.core.jobs.devices import DEVICE_FORMS, parse_devices
from bone_apps.core.options import names_options_of, not_an_option, option
from bone_apps.core.predict.settings import DEFAULT_CHUNK, DEFAULT_OVERLAP
from bone_apps.core.predict.windows import BlendMode, check_overlap

if TYPE_CHECKING:
    from bone_apps.core.predict.cleanup import CleanOptions


@dataclass(frozen=True)
class PredictConfig:
    """Everything one prediction run needs.

    Attributes:
        scans: scans in any format open_volume reads (TIFF folders or files, OME-Zarr images
            or levels, NIfTI files, HDF5 datasets `file.h5:/path`).
        weights: a .pth weights file written by fitting, or an .onnx written by bone export
            (its metadata says everything about the model: dims, architecture, encoder,
            channels, classes, normalization).
        out: for one scan, its label stack, in the scan's kind unless its name says another
            (a folder for a folder scan, .tif, .ome.zarr, .nii/.nii.gz, .h5;
            SCAN.ome.zarr/labels/NAME joins an OME-Zarr scan's labels group); for several, a
            folder receiving OUT/<id> with each scan's suffix (see plan_outputs).
        chunk: chunk edge in pixels (rounded up to the network's required multiple; shrunk to
            the slice when larger). None, and None for `overlap` and `blend`: the settings
            the fit validated the model with, from the weights (the paper's 512 px, 0.25 and
            mean for weights that do not say).
        chunk_depth: 3D chunk depth in slices (default: the depth the model was fitted on).
        overlap: fraction of a chunk shared with its neighbour, in [0, 1).
        threshold: a voxel whose winning class probability is below it becomes background (0).
        blend: how overlapping chunks are weighted (mean or gaussian).
        batch: chunks per forward pass; None picks it from free GPU memory or available RAM.
        device: "auto", "cpu", "cuda", "cuda:N", "cuda:N,M,..." or "cuda:all" (core/jobs/devices.py;
            several GPUs: DataParallel).
        tta: average the probabilities over in-plane flips (4 passes per chunk).
        probabilities: also write each class's probability stack as uint8 (0-255).
        overwrite: replace existing outputs.
        report: a JSON file to write the report to.
        stats_cache: folder caching per-scan statistics (None: no cache).
        stats_workers: processes computing statistics (None: one per scan up to the CPU count).
        clean: clean-up of each label stack before it is saved (core/predict/cleanup.py), with labels
            as written in the output (the values `bone clean` takes); None, or options that
            choose nothing: off. The scan's labels are then held and cleaned in memory (about
            14 bytes per voxel) and written once, cleaned.
        out_format: the outputs' format (formats.VolumeFormat: tiff, zarr, nifti, hdf5);
            None: each scan's own, or what OUT's name says.
    """

    scans: tuple[Path, ...] = not_an_option(why="the CLI's SCAN arguments (or --data ROOT) and the "
                                                "window's scan picker")
    weights: Path = option(help="weights file written by bone fit (.pth), or an .onnx written by bone "
                                "export (run with onnxruntime)", label="Model", metavar="MODEL.pth")
    out: Path = option(help="one scan: its label stack, of the scan's kind unless the name says another "
                            "(a folder, .tif, .ome.zarr, .nii.gz, .h5; SCAN.ome.zarr/labels/NAME joins "
                            "the scan's OME-Zarr labels group); several: a folder receiving OUT/<id>",
                       label="Output", metavar="OUT")
    chunk: int | None = option(None, help="chunk edge in pixels; shrunk to small slices", label="Chunk size",
                               metavar="N", default_text=f"what the fit validated, from the weights; "
                                                         f"{DEFAULT_CHUNK} for older weights")
    chunk_depth: int | None = option(None, help="3D models: chunk depth in slices", metavar="N",
                                     label="Chunk depth (3D)", default_text="the fitted patch depth")
    overlap: float | None = option(None, help="fraction of a chunk shared with its neighbour, in [0, 1)",
                                   label="Overlap", metavar="F", default_text=f"from the weights; "
                                   f"{DEFAULT_OVERLAP:g} for older weights")
    threshold: float = option(0.5, help="voxels whose winning probability is below T become background "
                                        "(0 keeps every label)", label="Confidence threshold", metavar="T")
    blend: BlendMode | None = option(None, help="weighting of overlapping chunks", label="Blending",
                                     choices=tuple(m.value for m in BlendMode),
                                     default_text=f"from the weights; {BlendMode.MEAN.value} for older "
                                                  "weights")
    batch: int | None = option(None, help="chunks per forward pass", label="Batch size", metavar="auto|N",
                               default_text="auto: from free GPU memory or RAM")
    device: str = option("auto", help="where the network runs (several GPUs: cuda:0,1 or cuda:all)",
                         label="Device", metavar="|".join(DEVICE_FORMS))
    tta: bool = option(False, help="average over flipped copies (4x slower)",
                       label="Average over mirrored copies (TTA)")
    probabilities: bool = option(False, help="also write each class's probability stack (uint8, 0-255) "
                                             "next to the labels", label="Also save class probabilities")
    overwrite: bool = option(False, help="replace existing outputs, only ones bone_apps wrote (others are "
                                         "never touched)", label="Replace an existing output")
    report: Path | None = option(None, help="also write the report as JSON", label="Report",
                                 metavar="FILE.json")
    stats_cache: Path | None = not_an_option(None, why="the user's statistics cache folder")
    stats_workers: int | None = not_an_option(None, why="one process per scan up to the CPU count")
    clean: CleanOptions | None = not_an_option(None, why="the --clean-* flags (CleanOptions)")
    out_format: VolumeFormat | None = option(
        None, help="format of the label stacks and probability maps: tiff (a folder of slices, or "
                   "OUT.tif), zarr (OME-Zarr with a multiscale pyramid), nifti, hdf5", label="Format",
        flag="--format", choices=tuple(f.value for f in VolumeFormat), default_text="each scan's own")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        scans = (self.scans,) if isinstance(self.scans, (str, os.PathLike)) else self.scans
        set_(self, "scans", tuple(Path(s).expanduser() for s in scans))
        set_(self, "weights", Path(self.weights).expanduser())
        set_(self, "out", Path(self.out).expanduser())
        if self.report is not None:
            set_(self, "report", Path(self.report).expanduser())
        if self.stats_cache is not None:
            set_(self, "stats_cache", Path(self.stats_cache).expanduser())
        if self.blend is not None:
            set_(self, "blend", parse_choice(BlendMode, self.blend, "{blend}", PredictConfigError, "blend"))
        if self.overlap is not None:
            set_(self, "overlap", check_overlap(self.overlap))
        if self.out_format is not None:
            set_(self, "out_format", parse_choice(VolumeFormat, self.out_format, "{out_format}",
                                                  PredictConfigError, "out_format"))
        set_(self, "device", str(self.device).strip().lower().replace(" ", ""))
        if not self.scans:
            raise PredictConfigError("no scan was given: name at least one scan folder or TIFF file.",
                                     "scans")
        if self.chunk is not None and int(self.chunk) < 1:
            raise PredictConfigError(f"{{chunk}} {self.chunk} must be a positive number of pixels, e.g. 512.",
                                     "chunk")
        if self.chunk_depth is not None and int(self.chunk_depth) < 1:
            raise PredictConfigError(f"{{chunk_depth}} {self.chunk_depth} must be a positive number of "
                                     "slices.", "chunk_depth")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise PredictConfigError(
                f"{{threshold}} {self.threshold} is outside [0, 1]: use a probability such as 0.5 "
                "(0 keeps every label).", "threshold")
        if self.batch is not None and int(self.batch) < 1:
            raise PredictConfigError(f"{{batch}} {self.batch} must be a positive number of chunks (or auto).",
                                     "batch")
        parse_devices(self.device, PredictConfigError)
        if self.clean is not None:
            from bone_apps.core.predict.cleanup import CleanOptions, check_sizes

            # A dict: the config as a report holds it.
            clean = CleanOptions.from_dict(self.clean) if isinstance(self.clean, dict) else self.clean
            check_sizes(clean)
            set_(self, "clean", clean if clean.active else None)

    def to_dict(self) -> dict:
        """Plain data (paths as strings), for the report."""
        data = asdict(self)
        data["scans"] = [str(s) for s in self.scans]
        data["blend"] = None if self.blend is None else self.blend.value
        data["out_format"] = None if self.out_format is None else self.out_format.value
        for key in ("weights", "out", "report", "stats_cache"):
            data[key] = None if data[key] is None else str(data[key])
        return data


names_options_of(PredictConfigError, PredictConfig)
