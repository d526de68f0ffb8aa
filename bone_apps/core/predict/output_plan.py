"""Where prediction writes: the scans of a dataset, and each scan's label and probability targets.

`plan_outputs` decides every output path before any work starts (the form each output takes,
from the scan's own kind or the chosen format) and refuses, with one sentence, outputs that
would replace a scan, the weights or another output, or a file bone_apps did not write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.errors import PredictConfigError, VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.formats import VolumeFormat
from bone_apps.core.io.outputs import check_target
from bone_apps.core.io.volume import Volume, open_volume, volume_id, volumes_in
from bone_apps.core.predict.config import PredictConfig


def scans_in(root: str | os.PathLike) -> list[Path]:
    """Every scan of a dataset folder, in natural order: the volumes in ROOT/scans (folders of
    TIFF slices, OME-Zarr stores, TIFF, NIfTI and HDF5 files; volume.volumes_in)."""
    folder = Path(root).expanduser() / "scans"
    if not folder.is_dir():
        raise VolumeError(f"{folder} does not exist: choose a dataset folder that holds a scans/ folder.")
    scans = volumes_in(folder)
    if not scans:
        raise VolumeError(f"{folder} holds no scans: put one folder of TIFF slices (or one TIFF, "
                          "OME-Zarr, NIfTI or HDF5 file) per scan there.")
    return scans


scan_id = volume_id  # the name a scan's outputs get


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


@dataclass(frozen=True)
class ScanJob:
    """One scan and where its outputs go."""

    index: int
    scan: Path
    labels: Path
    probabilities: tuple[Path, ...]


def probability_target(labels: Path, class_name: str) -> Path:
    """Where a class's probability stack goes: next to the labels, named after the class, in
    the labels' format ("x.ome.zarr" -> "x_prob_bone.ome.zarr")."""
    tag = f"_prob_{_safe_name(class_name)}"
    stem = formats.strip_suffix(labels.name)
    return labels.with_name(stem + tag + labels.name[len(stem):])


# How messages name what a --format or an output name asks for.
_NAMED = {formats.TIFF_FILE: "a TIFF file", formats.ZARR: "an OME-Zarr image",
          formats.NIFTI: "a NIfTI file", formats.HDF5: "an HDF5 file"}


def _form_of(volume: Volume) -> str:
    """The output form of a scan's own kind (formats.FOLDER, TIFF_FILE, ZARR, NIFTI, HDF5)."""
    if volume.kind == "tiff":
        return formats.FOLDER if volume.is_folder else formats.TIFF_FILE
    return {"zarr": formats.ZARR, "nifti": formats.NIFTI, "hdf5": formats.HDF5}[volume.kind]


def _form_for(chosen: VolumeFormat | None, own: str) -> str:
    """The form a scan's outputs take: its own, or the one --format chooses (TIFF: a folder
    for a folder or Zarr scan, one multi-page file for a file)."""
    if chosen is None:
        return own
    if chosen is VolumeFormat.TIFF:
        return formats.FOLDER if own in (formats.FOLDER, formats.ZARR) else formats.TIFF_FILE
    return formats.FORM_OF_FORMAT[chosen]


def _suffix(form: str, scan: Path) -> str:
    """The suffix of an output of `form` (a NIfTI scan's own .nii or .nii.gz is kept)."""
    if form == formats.NIFTI and scan.name.lower().endswith(".nii"):
        return ".nii"
    return formats.FORM_SUFFIX[form]


def _check_single_out(scan: Path, own: str, out: Path, chosen: VolumeFormat | None) -> None:
    """OUT of a single scan must name a form the scan's labels can take (see plan_outputs)."""
    named = formats.form_of_name(out)
    if chosen is not None:
        wanted = _form_for(chosen, own)
        if chosen is VolumeFormat.TIFF:
            ok = named in (None, formats.TIFF_FILE)
        else:
            ok = named == wanted or (named is None and formats.labels_group_image(out) is not None
                                     and wanted == formats.ZARR)
        if not ok and named is None:
            words, suffix = formats.FORM_WORDS[wanted], formats.FORM_SUFFIX[wanted]
            raise PredictConfigError(f"{{out_format}} {chosen.value} writes {words}: give {{out}} a name "
                                     f"ending in {suffix} instead of {out}.", "out")
        if not ok:
            raise PredictConfigError(f"{{out_format}} {chosen.value} does not match {out}, which names "
                                     f"{_NAMED[named]}: change one of them.", "out_format")
        return
    if named is None and formats.labels_group_image(out) is not None:
        return  # IMAGE.ome.zarr/labels/NAME: a labels group member (checked in _check_output_places)
    if named is None and own == formats.TIFF_FILE:
        raise PredictConfigError(f"{scan} is one multi-page TIFF, so its labels are written as one "
                                 f"too: give {{out}} a file name ending in .tif instead of {out}.", "out")
    if named is None and own != formats.FOLDER:
        raise PredictConfigError(f"{scan} is {formats.FORM_WORDS[own]}, so its labels are written as one "
                                 f"too: give {{out}} a name ending in {_suffix(own, scan)} instead of {out} "
                                 "(or choose another format with {out_format}).", "out")
    if named == formats.TIFF_FILE and own == formats.FOLDER:
        raise PredictConfigError(f"{scan} is a folder of slices, so its labels are written as a "
                                 f"folder too: give {{out}} a folder name instead of {out}.", "out")


def plan_outputs(config: PredictConfig, class_names: Sequence[str]) -> list[ScanJob]:
    """Output paths of every scan: OUT itself for one scan, OUT/<id> for several.

    Outputs take their scan's kind: a folder scan gives a folder of slices, a multi-page scan
    one multi-page file, an OME-Zarr scan an OME-Zarr image (<id>.ome.zarr), a NIfTI scan a
    NIfTI file, an HDF5 scan an HDF5 file (<id>.h5, dataset /data). config.out_format
    chooses another kind for every scan; for one scan, OUT's suffix may choose too
    (.ome.zarr, .nii.gz, .h5, or .tif for a scan that is not a TIFF folder). An OME-Zarr
    scan's labels may join its own labels group: OUT = SCAN.ome.zarr/labels/NAME.

    Raises:
        VolumeError: a scan cannot be opened.
        PredictConfigError: OUT's form does not match the scan or the format, two scans share
            an id, or an output (labels, probabilities, report) would replace a scan or the
            weights or lie inside a scan folder or store (but for its labels group).
        OutputExistsError: an output exists and overwriting was not asked for, or (with
            overwrite) bone_apps did not write it (ForeignFilesError).
    """
    jobs = []
    out = config.out
    several = len(config.scans) > 1
    named = formats.form_of_name(out)
    file, dataset = formats.split_hdf5(out)
    if dataset is not None:
        raise PredictConfigError(f"{out} names a dataset: give {{out}} the HDF5 file alone ({file}); the "
                                 f"labels go to its {formats.DEFAULT_HDF5_DATASET} dataset.", "out")
    if several and named is not None:
        raise PredictConfigError(f"{out} names {_NAMED[named]} but {len(config.scans)} scans were given: "
                                 "give {out} a folder, which receives one label stack per scan.", "out")
    seen: dict[str, Path] = {}
    for i, scan in enumerate(config.scans):
        with open_volume(scan) as volume:  # headers only: an unreadable scan fails before any work
            own = _form_of(volume)
        sid = scan_id(scan)
        if several:
            if sid in seen:
                raise PredictConfigError(f"{seen[sid]} and {scan} would both be written as {sid}: "
                                         "rename one of them or predict them separately.")
            seen[sid] = scan
            form = _form_for(config.out_format, own)
            target = out / (sid + _suffix(form, scan))
        else:
            target = out
            _check_single_out(scan, own, out, config.out_format)
        if config.probabilities and formats.labels_group_image(target) is not None:
            raise PredictConfigError(f"{target} joins the labels group of an OME-Zarr image, which holds "
                                     "labels, not probability maps: give {out} its own name (e.g. "
                                     f"{sid}_labels.ome.zarr) to write probabilities.", "out")
        probs = tuple(probability_target(target, n) for n in class_names) if config.probabilities else ()
        jobs.append(ScanJob(i, scan, target, probs))
    targets = [] if config.report is None else [config.report]
    targets += [path for job in jobs for path in (job.labels, *job.probabilities)]
    _check_output_places(targets, config)
    # Before the statistics and the model: a refusal costs nothing and touches nothing.
    for target in targets:
        # Files of these formats carry their proof of ownership in their own place.
        ours = formats.file_is_ours if formats.form_of_name(target) in (formats.NIFTI, formats.HDF5) else None
        check_target(target, config.overwrite, ours)
    return jobs


def _check_output_places(targets: Sequence[Path], config: PredictConfig) -> None:
    """An output may not be a scan or the weights, nor lie inside a scan folder, store or file
    (but for a labels group member of the scan's own OME-Zarr image), nor overlap another output
    (a report inside the label folder would make it no longer ours)."""
    scans = [formats.location(scan) for scan in config.scans]  # HDF5 files, Zarr stores, ...
    inputs = {path.resolve(): path for path in (*scans, config.weights)}
    folders = [scan.resolve() for scan in scans if scan.is_dir()]
    planned: dict[Path, Path] = {}  # where each output goes -> the output as named
    above_planned: dict[Path, Path] = {}  # every folder above a planned output -> that output
    for target in targets:
        where = target.resolve()
        clash = (planned.get(where) or above_planned.get(where)
                 or next((planned[p] for p in where.parents if p in planned), None))
        if clash is not None and clash.resolve() == where:
            raise PredictConfigError(f"{target} would receive two outputs (of the labels, "
                                     "probabilities and report): give each its own name.")
        if clash is not None:
            raise PredictConfigError(f"{clash} and {target} would overlap, one inside the other: "
                                     "give each output (labels, probabilities, report) its own place.")
        planned[where] = target
        for folder in where.parents:
            above_planned.setdefault(folder, target)
        above = next(p for p in where.parents if os.path.lexists(p))
        if not above.is_dir():
            raise PredictConfigError(f"{target} would be written inside {above}, which is a file, "
                                     "not a folder: choose another output.")
        if where in inputs:
            what = "weights file" if inputs[where] == config.weights else "scan"
            raise PredictConfigError(f"{target} is the {what} itself: choose another output.")
        inside = next((folder for folder in folders if folder in where.parents), None)
        image = formats.labels_group_image(target)
        if inside is not None and not (image is not None and image.resolve() == inside):
            raise PredictConfigError(f"{target} is inside the scan folder {inside}: choose an output "
                                     "outside it, so that the scan's slices stay on their own.")
