"""Bone morphometry of a label mask in physical units (Bouxsein et al. 2010).

For each chosen label: BV/TV, TV, BV (voxel counts), BS/BV (marching-cubes surface), Tb.Th and
Tb.Sp (direct 3D local thickness of the structure and of its background, Hildebrand &
Rueegsegger 1997), Tb.N = 1 / (Tb.Th + Tb.Sp), Conn and Conn.D (1 - Delta-chi, Odgaard &
Gundersen 1993), and for cortical labels Ct.Th and the slice-by-slice areas Tt.Ar, Ct.Ar, Ma.Ar.
The methods live in core/measure/; this module reads the mask (whole, or in z-slabs when it
would not fit in memory: the numbers are identical), runs them and collects a MorphometryResult.

With an ROI, TV is the ROI's volume and every measure is taken inside it: the thickness of the
structure and of the background is that of their parts inside the ROI (the ROI's edge bounds
both), while the surface and the connectivity are those of the whole structure, counted where
it lies inside the ROI (the ROI's edge adds no surface and does not cut loops).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.errors import BoneAppsError, Cancelled, LabelError
from bone_apps.core.io import outputs
from bone_apps.core.io.labels import file_key, too_many_values
from bone_apps.core.io.volume import Volume, VoxelSize, check_same_shape, open_volume
from bone_apps.core.io.writer import VolumeWriter
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.measure import cortical, euler, surface, thickness
from bone_apps.core.measure.report import (
    CSV_KEYS,
    CorticalAreas,
    Distribution,
    LabelMorphometry,
    MorphometryResult,
)

# Peak bytes per voxel of the thickness step (distances, indices, ridge test, painted output),
# the most memory-hungry step; a volume that fits in half the free memory is measured whole.
BYTES_PER_VOXEL = 48
_MIN_SLAB = 16
MAPS_KIND = "thickness-maps"

__all__ = ["MeasureOptions", "MeasureProgress", "MorphometryError", "MorphometryResult",
           "check_csv_target", "measure", "measure_stacks", "write_csv_file"]


class MorphometryError(BoneAppsError):
    """A measurement option does not suit the mask."""


@dataclass(frozen=True)
class MeasureOptions:
    """How to measure a mask.

    Attributes:
        labels: the label values to measure; empty: every label present except 0.
        class_names: names of labels 0, 1, ... (a label without one is called "label N"). A label
            named "cortical" (any case) also gets the cortical measures.
        voxel_size_um: (z, y, x) in micrometres; None: the one recorded in the mask's files.
        roi: a mask of the same shape whose non-zero voxels are the region to measure (TV);
            None: the whole volume.
        cortical: labels that get the cortical measures (Ct.Th, Tt.Ar, Ct.Ar, Ma.Ar).
        slab_slices: slices per slab; None: the whole volume when it fits in half the free
            memory, else as many as fit.
        threads: threads of the distance transforms; None: every core.
    """

    labels: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    voxel_size_um: tuple[float, float, float] | None = None
    roi: Path | None = None
    cortical: tuple[int, ...] = ()
    slab_slices: int | None = None
    threads: int | None = None


@dataclass(frozen=True)
class MeasureProgress:
    """Steps done out of the total (the total grows once the labels are known)."""

    stage: str
    label: int | None
    done: int
    total: int


def measure(mask: str | os.PathLike | Volume, options: MeasureOptions | None = None,
            maps: str | os.PathLike | None = None, overwrite: bool = False) -> MorphometryResult:
    """Run `measure_stacks` to the end and return its result."""
    return run_to_end(measure_stacks(mask, options, maps=maps, overwrite=overwrite))


def measure_stacks(mask: str | os.PathLike | Volume, options: MeasureOptions | None = None,
                   maps: str | os.PathLike | None = None, overwrite: bool = False,
                   stop: threading.Event | None = None,
                   ) -> Generator[MeasureProgress, None, MorphometryResult]:
    """Measure every chosen label of a mask, yielding progress; returns the MorphometryResult.

    Args:
        mask: label stack (folder of TIFF slices or multi-page TIFF), uint8 or uint16, (Z, Y, X).
        options: what and how to measure.
        maps: a folder to write each label's thickness and spacing maps to, as 32-bit float
            multi-page TIFFs in mm (0 outside the structure), named LABEL_NAME_Tb.Th.tif and
            LABEL_NAME_Tb.Sp.tif.
        overwrite: replace maps that bone_apps wrote before.
        stop: set it to stop between slabs (raises Cancelled).

    Raises:
        VolumeError / ShapeMismatchError: unreadable mask or ROI, or their shapes differ.
        MorphometryError: no voxel size, a bad option, or nothing to measure.
        LabelError: the mask holds more values than a label mask can.
        OutputExistsError / ForeignFilesError: a map exists (without overwrite) or is not ours.
    """
    job = _Job(mask, options or MeasureOptions(), stop or threading.Event())
    return (yield from job.run(Path(maps).expanduser() if maps is not None else None, overwrite))


# ----------------------------------------------------------------------------------------------
# Reading


class _Stack:
    """The mask (and ROI) by slices, read once and kept when measured whole."""

    def __init__(self, mask: Volume, roi: Volume | None, keep: bool) -> None:
        self.mask, self.roi = mask, roi
        self.depth = mask.shape[0]
        self._labels = mask.read_slab(0, self.depth) if keep else None
        self._region = (roi.read_slab(0, self.depth) != 0) if keep and roi is not None else None

    def labels(self, a: int, b: int) -> np.ndarray:
        return self._labels[a:b] if self._labels is not None else self.mask.read_slab(a, b)

    def region(self, a: int, b: int) -> np.ndarray | None:
        """ROI voxels of slices a..b-1 (None: no ROI, everything counts)."""
        if self.roi is None:
            return None
        return self._region[a:b] if self._region is not None else self.roi.read_slab(a, b) != 0

    def phase(self, label: int, inside: bool, a: int, b: int) -> np.ndarray:
        """The label's voxels (inside) or the other voxels, within the ROI, of slices a..b-1."""
        labels = self.labels(a, b)
        phase = labels == label if inside else labels != label
        region = self.region(a, b)
        if region is not None:
            phase &= region
        return phase

    def halo(self, label: int, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """(structure, region) of slices z0-1..z1 (False outside the volume)."""
        shape = (z1 - z0 + 2, *self.mask.shape[1:])
        structure, region = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
        a, b = max(0, z0 - 1), min(self.depth, z1 + 1)
        structure[a - z0 + 1:b - z0 + 1] = self.labels(a, b) == label
        inside = self.region(a, b)
        region[a - z0 + 1:b - z0 + 1] = True if inside is None else inside
        return structure, region


# ----------------------------------------------------------------------------------------------
# The job


class _Job:
    def __init__(self, mask: str | os.PathLike | Volume, options: MeasureOptions,
                 stop: threading.Event) -> None:
        self.options = options
        self.stop = stop
        self.mask = mask if isinstance(mask, Volume) else open_volume(mask, role="mask")
        self.roi = None
        if options.roi is not None:
            self.roi = open_volume(options.roi, role="mask")
            check_same_shape(self.mask, self.roi, what="ROI")
        self.voxel_um, self.voxel_from = _voxel_size(self.mask, options.voxel_size_um)
        self.unit_um, self.spacing = thickness.unit_spacing(self.voxel_um)
        self.threads = max(1, options.threads or os.cpu_count() or 1)
        depth = self.mask.shape[0]
        self.slab = _slab_slices(self.mask.shape, options.slab_slices)
        self.whole = self.slab >= depth
        self.slabs = [(z0, min(depth, z0 + self.slab)) for z0 in range(0, depth, self.slab)]
        self.stack = _Stack(self.mask, self.roi, keep=self.whole)
        self.done = 0
        self.total = len(self.slabs)

    def _tick(self, stage: str, label: int | None) -> MeasureProgress:
        if self.stop.is_set():
            raise Cancelled("measuring was stopped before the end.")
        self.done += 1
        return MeasureProgress(stage, label, self.done, self.total)

    def run(self, maps: Path | None, overwrite: bool) -> Generator[MeasureProgress, None, MorphometryResult]:
        yield MeasureProgress("counting", None, 0, self.total)
        counts, tv = yield from self._count()
        labels = self._chosen()
        names = {label: self._name(label) for label in labels}
        per_label = 2 * len(self.slabs) * (1 if self.whole else 2) + len(self.slabs)
        present = [label for label in labels if counts.get(label, 0)]
        self.total += per_label * len(present)
        map_targets = self._claim_maps(maps, present, names, overwrite) if maps is not None else {}
        voxel_mm3 = math.prod(self.voxel_um) / 1e9
        results = []
        for label in labels:
            voxels = int(counts.get(label, 0))
            is_cortical = label in self.options.cortical or names[label].lower() == "cortical"
            if voxels == 0:
                results.append(LabelMorphometry(label, names[label], 0, tv, voxel_mm3, None, None,
                                                None, None, None))
                continue
            targets = map_targets.get(label, (None, None))
            th = yield from self._thickness(label, True, targets[0], overwrite)
            sp = yield from self._thickness(label, False, targets[1], overwrite)
            area_um2, eighths, areas = yield from self._structure(label, is_cortical)
            surface_mm2 = area_um2 / 1e6 if self.stack.depth > 1 else None  # no mesh in 2D
            results.append(LabelMorphometry(
                label, names[label], voxels, tv, voxel_mm3, surface_mm2, th, sp, eighths / 8,
                self._cortical(areas) if is_cortical else None))
        return MorphometryResult(
            mask=str(self.mask.path), roi=None if self.roi is None else str(self.roi.path),
            shape=tuple(int(s) for s in self.mask.shape), voxel_size_um=self.voxel_um,
            voxel_size_from=self.voxel_from, labels=results,
            maps=[str(p) for pair in map_targets.values() for p in pair])

    # -- counting and naming

    def _count(self) -> Generator[MeasureProgress, None, tuple[dict[int, int], int]]:
        """Voxels of each value inside the ROI, and the ROI's voxels (TV)."""
        counts = np.zeros(1 << 16, dtype=np.int64)
        present = np.zeros(1 << 16, dtype=bool)
        tv = 0
        for z0, z1 in self.slabs:
            labels = self.stack.labels(z0, z1).reshape(-1)
            region = self.stack.region(z0, z1)
            present[np.flatnonzero(np.bincount(labels, minlength=1))] = True
            values = np.flatnonzero(present)
            problem = too_many_values(self.mask.path, values.tolist(), complete=z1 == self.stack.depth)
            if problem:
                raise LabelError(problem + ".")
            inside = labels if region is None else labels[region.reshape(-1)]
            found = np.bincount(inside, minlength=1)
            counts[:found.size] += found
            tv += inside.size
            yield self._tick("counting", None)
        self.present = np.flatnonzero(present).tolist()
        return {int(v): int(counts[v]) for v in self.present}, tv

    def _chosen(self) -> list[int]:
        if self.options.labels:
            labels = sorted(set(int(v) for v in self.options.labels))
            if any(v < 0 or v >= 1 << 16 for v in labels):
                raise MorphometryError(f"labels must be 0..65535 (got {labels}): choose labels of "
                                       f"{self.mask.path}.")
            return labels
        labels = [v for v in self.present if v != 0]
        if not labels:
            raise MorphometryError(f"{self.mask.path} holds no label other than 0: choose the mask "
                                   "with the structures to measure.")
        return labels

    def _name(self, label: int) -> str:
        names = self.options.class_names
        if names and max(self.present) >= len(names) and len(names) == len(self.present):
            # Values beyond the names, one name per value present: e.g. 0/255 masks, two names.
            return names[self.present.index(label)] if label in self.present else f"label {label}"
        return names[label] if label < len(names) else f"label {label}"

    # -- the three passes of a label

    def _thickness(self, label: int, inside: bool, target: Path | None,
                   overwrite: bool) -> Generator[MeasureProgress, None, Distribution | None]:
        stage = "thickness" if inside else "spacing"
        depth = self.stack.depth

        def read(a: int, b: int) -> np.ndarray:
            return self.stack.phase(label, inside, a, b)

        lattice = None
        if not self.whole:
            job = thickness.largest_norm(read, depth, self.spacing, self.slab, self.threads)
            top = yield from self._ticks(job, stage, label)
            if top == 0.0 or not math.isfinite(top):
                self._skip(len(self.slabs))
                self._zero_map(target, overwrite)
                return None
            lattice = thickness.Lattice(self.spacing, top)
        writer = None
        counts = None
        try:
            job = thickness.thickness_slabs(read, depth, self.spacing, self.slab, self.threads, lattice)
            while True:
                try:
                    item = next(job)
                except StopIteration as done:
                    lattice = done.value
                    break
                if isinstance(item, thickness.SlabDone):
                    yield self._tick(stage, label)
                    continue
                table = item.lattice.thickness_um(self.unit_um)
                found = np.bincount(item.index.reshape(-1), minlength=table.size)
                counts = found if counts is None else counts + found
                if target is not None:
                    if writer is None:
                        writer = self._map_writer(target, overwrite)
                    values = (table / 1000.0).astype(np.float32)
                    values[0] = 0.0
                    for plane in item.index:
                        writer.write(values[plane])
            if lattice is None or counts is None:
                self._zero_map(target, overwrite)
                return None
            if writer is not None:
                writer.commit()
                writer = None
        finally:
            if writer is not None:
                writer.abort()
        counts[0] = 0  # voxels outside the structure
        units = 2.0 * np.sqrt(lattice.norms)
        return Distribution.from_counts(counts, units, self.unit_um / 1000.0)

    def _structure(self, label: int, is_cortical: bool
                   ) -> Generator[MeasureProgress, None, tuple[float, int, list[cortical.SliceAreas]]]:
        """Surface area (um^2), eight times Delta-chi, and the cortical areas of each slice."""
        area, eighths, areas = 0.0, 0, []
        depth = self.stack.depth
        for z0, z1 in self.slabs:
            structure, region = self.stack.halo(label, z0, z1)
            last = z1 == depth
            eighths += euler.euler_eighths(structure, region, last)
            # The mesh of this slab: its slices and the next one (left open at the volume's end).
            end = z1 - z0 + (1 if last else 2)
            area += surface.surface_area(structure[1:end], self.voxel_um,
                                         None if self.roi is None else region[1:end])
            if is_cortical:
                core = structure[1:z1 - z0 + 1] & region[1:z1 - z0 + 1]
                areas += cortical.slice_areas(core, z0)
            yield self._tick("surface and connectivity", label)
        return area, eighths, areas

    def _cortical(self, areas: list[cortical.SliceAreas]) -> CorticalAreas:
        pixel_mm2 = self.voxel_um[1] * self.voxel_um[2] / 1e6
        return CorticalAreas(tuple(a.z for a in areas), tuple(a.total * pixel_mm2 for a in areas),
                             tuple(a.cortical * pixel_mm2 for a in areas))

    def _ticks(self, job: Generator, stage: str, label: int) -> Generator[MeasureProgress, None, object]:
        while True:
            try:
                next(job)
            except StopIteration as done:
                return done.value
            yield self._tick(stage, label)

    def _skip(self, steps: int) -> None:
        self.total -= steps

    # -- maps

    def _claim_maps(self, folder: Path, labels: Sequence[int], names: dict[int, str],
                    overwrite: bool) -> dict[int, tuple[Path, Path]]:
        targets = {label: tuple(folder / f"{label}_{file_key(names[label])}_{key}.tif"
                                for key in ("Tb.Th", "Tb.Sp")) for label in labels}
        outputs.check_targets([p for pair in targets.values() for p in pair], overwrite)
        marker = outputs.read_marker(folder)
        entries = [p.name for pair in targets.values() for p in pair]
        if marker is None:
            outputs.claim_folder(folder, MAPS_KIND, entries, overwrite)
        else:
            outputs.write_marker(folder, MAPS_KIND, set(marker.get("entries", ())) | set(entries))
        return targets

    def _zero_map(self, target: Path | None, overwrite: bool) -> None:
        """A map of an undefined thickness (no structure, or no background): all zeros."""
        if target is None:
            return
        with self._map_writer(target, overwrite) as writer:
            zeros = np.zeros(self.mask.shape[1:], dtype=np.float32)
            for _ in range(self.mask.shape[0]):
                writer.write(zeros)

    def _map_writer(self, target: Path, overwrite: bool) -> VolumeWriter:
        z, y, x = self.voxel_um
        return VolumeWriter(target, self.mask.shape, np.float32, voxel_size=VoxelSize(z, y, x),
                            overwrite=overwrite)


def _voxel_size(mask: Volume, given: Sequence[float] | None) -> tuple[tuple[float, float, float], str]:
    if given is not None:
        values = tuple(float(v) for v in given)
        if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
            raise MorphometryError(f"voxel size {list(given)} is not three positive numbers (z, y, x) "
                                   f"in micrometres: give the voxel size of {mask.path}.")
        return values, "option"
    size = mask.voxel_size
    if size is None:
        raise MorphometryError(f"{mask.path} does not record its voxel size: give it in micrometres "
                               "with --voxel-size.")
    return (float(size.z), float(size.y), float(size.x)), "file"


def _slab_slices(shape: tuple[int, int, int], asked: int | None) -> int:
    depth, height, width = shape
    if asked is not None:
        if asked < 1:
            raise MorphometryError(f"slab of {asked} slices: give at least 1 slice per slab.")
        return int(asked)
    import psutil

    budget = psutil.virtual_memory().available // 2
    fit = budget // (BYTES_PER_VOXEL * height * width)
    if fit >= depth:
        return depth
    # Half of what fits: the overlap the distance transform needs comes on top.
    return max(_MIN_SLAB, int(fit) // 2)


# ----------------------------------------------------------------------------------------------
# CSV output (JSON goes through outputs.write_json_file)


def check_csv_target(path: str | os.PathLike, overwrite: bool) -> None:
    """An existing CSV is replaced only with overwrite, and only when its header is ours."""
    outputs.check_target(path, overwrite, ours=_csv_is_ours)


def _csv_is_ours(path: Path) -> bool:
    header = ",".join(CSV_KEYS)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n") == header
    except (OSError, UnicodeDecodeError):
        return False


def write_csv_file(path: str | os.PathLike, result: MorphometryResult, overwrite: bool = False) -> Path:
    """Write the results as CSV (one row per label), atomically."""
    check_csv_target(path, overwrite)
    return outputs.write_atomic(path, result.csv_text())
