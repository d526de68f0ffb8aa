"""Scan/mask pairs for fitting: finding them, checking them all at once, summarizing them.

Checks open every scan and mask (headers only), compare shapes, and count mask labels
slice by slice in parallel processes (cached like the normalization statistics, and in the
same pass), so every problem is reported together before any fitting starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.data.normalize import ScanStats, run_volume_tasks, stats_task
from bone_apps.core.errors import DataCheckError, LabelError, VolumeError
from bone_apps.core.io.formats import at_level, is_ours
from bone_apps.core.io.labels import MAX_LABEL_VALUES, LabelMap, label_map_for, too_many_values
from bone_apps.core.io.volume import open_volume, volume_id, volumes_in

DEFAULT_CLASS_NAMES = ("background", "bone", "pores")


@dataclass(frozen=True)
class ScanPair:
    """One scan and its mask, with the id used in logs and split.json."""

    id: str
    scan: Path
    mask: Path


@dataclass(frozen=True)
class PairInfo:
    """What the checks learned about one pair."""

    pair: ScanPair
    shape: tuple[int, int, int]
    dtype: str
    voxel_size: str | None
    label_counts: tuple[int, ...]  # voxels of class 0, 1, ... (mask values mapped: label_values)
    stats: ScanStats

    @property
    def fractions(self) -> list[float]:
        total = sum(self.label_counts) or 1
        return [c / total for c in self.label_counts]


@dataclass(frozen=True)
class DataSummary:
    """All pairs, checked: the infos in input order, the class count and names."""

    infos: tuple[PairInfo, ...]
    classes: int
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()  # e.g. non-TIFF files skipped in a folder
    # The mask value of class 0, 1, ... (labels.LabelMap); () or 0, 1, ...: labels are classes.
    label_values: tuple[int, ...] = ()

    @property
    def label_map(self) -> LabelMap:
        """How mask values become classes (identity when the masks hold 0..N-1)."""
        return LabelMap(self.label_values) if self.label_values else LabelMap.identity(self.classes)

    def by_id(self) -> dict[str, PairInfo]:
        return {info.pair.id: info for info in self.infos}

    def text(self) -> str:
        """A readable table: scans, slices, voxel sizes, class voxel fractions per scan."""
        head = ["scan", "slices", "size (YxX)", "type", "voxel"] + list(self.class_names)
        rows = [head]
        for info in self.infos:
            z, y, x = info.shape
            fractions = info.fractions + [0.0] * (self.classes - len(info.label_counts))
            rows.append([info.pair.id, str(z), f"{y}x{x}", info.dtype, info.voxel_size or "unknown"]
                        + [f"{100 * f:.1f} %" for f in fractions[: self.classes]])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        slices = sum(info.shape[0] for info in self.infos)
        lines.append(f"{len(self.infos)} scans, {slices} slices, {self.classes} classes "
                     f"({', '.join(self.class_names)})")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def is_prediction_output(path: Path) -> bool:
    """Whether `path` is a label or probability stack that a prediction wrote (named
    `<id>_labels` or `<id>_labels_prob_<class>`, carrying bone_apps' ownership proof).

    The proof alone does not tell: sample datasets' scans and masks carry it too.
    """
    ident = volume_id(path)
    if not (ident.endswith("_labels") or "_labels_prob_" in ident):
        return False
    return is_ours(path)


def _entries(folder: Path, skipped: list[Path] | None = None) -> dict[str, Path]:
    """Volumes in a folder (volumes_in), by id; prediction outputs go to `skipped`."""
    found = {}
    for path in volumes_in(folder):
        if is_prediction_output(path):
            if skipped is not None:
                skipped.append(path)
            continue
        found[volume_id(path)] = path
    return found


def skipped_note(skipped: Sequence[Path]) -> str:
    """The note that names prediction outputs left out of a dataset."""
    names = ", ".join(str(p) for p in skipped[:4]) + (
        f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
    return (f"skipped {len(skipped)} prediction output(s) written by bone_apps inside the dataset "
            f"({names}): they are neither scans nor masks")


def pairs_from_root(root: Path, notes: list[str] | None = None) -> list[ScanPair]:
    """Pairs ROOT/scans/<id> + ROOT/masks/<id> matched by name (volumes_in: TIFF folders or
    files, OME-Zarr, NIfTI, HDF5 files holding one dataset; the formats may differ).

    Label and probability stacks that a prediction wrote into scans/ or masks/ (see
    is_prediction_output) are left out; when `notes` is given, a note naming them is added.

    Raises:
        DataCheckError: the folders are missing, or scans and masks do not match; every
            unmatched name is listed.
    """
    root = Path(root).expanduser()
    scans_dir, masks_dir = root / "scans", root / "masks"
    missing = [str(d) for d in (scans_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise DataCheckError(f"{' and '.join(missing)} not found: --data needs ROOT/scans/<id> and "
                             "ROOT/masks/<id> with the same names.")
    skipped: list[Path] = []
    scans, masks = _entries(scans_dir, skipped), _entries(masks_dir, skipped)
    if skipped and notes is not None:
        notes.append(skipped_note(skipped))
    problems = [f"{scans[i]} has no mask: add {masks_dir / scans[i].name}" for i in scans
                if i not in masks]
    problems += [f"{masks[i]} has no scan: add {scans_dir / masks[i].name} or remove the mask"
                 for i in masks if i not in scans]
    if problems:
        raise DataCheckError(_problem_text(problems))
    if not scans:
        raise DataCheckError(f"{scans_dir} holds no scans: add one folder of TIFF slices (or one "
                             "TIFF, OME-Zarr, NIfTI or HDF5 file) per scan.")
    return [ScanPair(i, scans[i], masks[i]) for i in scans]


def pairs_from_paths(pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]]) -> list[ScanPair]:
    """Pairs given one by one (--pair SCAN MASK); ids from scan names, made unique."""
    result, seen = [], {}
    for scan, mask in pairs:
        scan, mask = Path(scan).expanduser(), Path(mask).expanduser()
        base = volume_id(scan)
        seen[base] = seen.get(base, 0) + 1
        ident = base if seen[base] == 1 else f"{base}_{seen[base]}"
        result.append(ScanPair(ident, scan, mask))
    return result


def with_level(pairs: Sequence[ScanPair], level: int | None) -> list[ScanPair]:
    """The pairs with scans and masks read at OME-Zarr resolution level `level` (formats.at_level;
    None: as given). Ids stay the same.

    Raises:
        VolumeError: a level above 0 of a volume without levels, or beyond the last.
    """
    if level is None:
        return list(pairs)
    return [ScanPair(p.id, at_level(p.scan, level), at_level(p.mask, level)) for p in pairs]


def _problem_text(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0] + "."
    return f"{len(problems)} problems with the scan/mask pairs:\n" + "\n".join(
        f"  - {p}" for p in problems)


def label_counts_task(path: str) -> dict:
    """Voxels per label value of one mask, counted slice by slice (a run_volume_tasks task).

    Returns {"values": [...], "counts": [...], "complete": bool}: counting stops early (complete
    False) once the mask holds more distinct values than a label mask may, e.g. a scan.
    """
    counts = np.zeros(0, dtype=np.int64)
    complete = True
    with open_volume(path, role="mask") as volume:
        for slice_ in volume.iter_slices():
            c = np.bincount(slice_.ravel())  # masks are uint8/uint16: at most 65536 bins
            if c.size > counts.size:
                counts = np.pad(counts, (0, c.size - counts.size))
            counts[: c.size] += c
            if np.count_nonzero(counts) > MAX_LABEL_VALUES:
                complete = False
                break
    values = np.flatnonzero(counts)
    return {"values": [int(v) for v in values], "counts": [int(counts[v]) for v in values],
            "complete": complete}


def _value_counts(result: dict) -> tuple[dict[int, int], bool]:
    """{value: voxels} and completeness of a label_counts_task result (also older cache entries,
    which held dense counts by label)."""
    if "values" in result:
        return dict(zip(result["values"], result["counts"])), bool(result.get("complete", True))
    return {v: c for v, c in enumerate(result["counts"]) if c}, True


def default_class_names(classes: int) -> tuple[str, ...]:
    """background, bone, pores (the paper's labels), then "class 3", ..."""
    return tuple(DEFAULT_CLASS_NAMES[i] if i < len(DEFAULT_CLASS_NAMES) else f"class {i}"
                 for i in range(classes))


def check_pairs(
    pairs: Sequence[ScanPair],
    class_names: Sequence[str] | None = None,
    workers: int | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DataSummary:
    """Check every pair and compute each scan's statistics and each mask's label counts.

    Args:
        pairs: the scan/mask pairs.
        class_names: names of labels 0, 1, ...; declares the classes (masks may not use
            more). None: classes = highest label + 1, names from default_class_names().
            Masks whose values are not 0..N-1 (e.g. 0/255, 0/128/255, 1/2/3) are mapped:
            the sorted values of all masks become classes 0..N-1 (names, when given, name
            them in order), summary.label_values records it and a note says so.
        workers, cache_dir, progress: as for normalize.run_volume_tasks.

    Raises:
        DataCheckError: listing every problem (unreadable or unsupported scans, shape
            mismatches, labels beyond the classes, masks without any foreground, masks with
            more than 64 distinct values, i.e. scans given as masks, which are refused before
            anything is sized from their values).
    """
    problems: list[str] = []
    notes: list[str] = []
    opened = []
    ids = [p.id for p in pairs]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"two scans are named {dup}: rename one of them")
    for pair in pairs:
        try:
            scan = open_volume(pair.scan, role="scan")
        except VolumeError as exc:
            problems.append(str(exc).rstrip("."))
            scan = None
        try:
            mask = open_volume(pair.mask, role="mask")
        except VolumeError as exc:
            problems.append(str(exc).rstrip("."))
            mask = None
        notes += [v.skipped_note() for v in (scan, mask) if v is not None and v.skipped_note()]
        if scan is not None and mask is not None:
            if scan.shape != mask.shape:
                problems.append(
                    f"{pair.mask} is {'x'.join(map(str, mask.shape))} (slices x height x width) but "
                    f"{pair.scan} is {'x'.join(map(str, scan.shape))}: choose the mask that belongs "
                    "to this scan")
            else:
                opened.append((pair, scan))
    if problems:
        raise DataCheckError(_problem_text(problems))
    tasks = []
    for pair, _ in opened:
        tasks += [(stats_task, pair.scan, "stats"), (label_counts_task, pair.mask, "labels")]
    values = run_volume_tasks(tasks, workers, cache_dir, progress)
    found = []
    for k, (pair, _) in enumerate(opened):
        by_value, complete = _value_counts(values[2 * k + 1])
        found.append(by_value)
        # Before anything is sized from the labels: a scan given as a mask stops here.
        problem = too_many_values(pair.mask, sorted(by_value), complete)
        if problem:
            problems.append(problem)
    if problems:
        raise DataCheckError(_problem_text(problems))
    union = sorted(set().union(*found))
    names = tuple(class_names or ())
    if names and union and union[-1] >= len(names) and len(union) != len(names):
        for (pair, _), by_value in zip(opened, found):
            extra = [v for v in sorted(by_value) if v >= len(names)]
            if extra:
                problems.append(
                    f"{pair.mask} holds label(s) {', '.join(map(str, extra))} but only "
                    f"{len(names)} classes are named ({', '.join(names)}): name every label "
                    f"(the masks hold {', '.join(map(str, union))}) or fix the mask")
        raise DataCheckError(_problem_text(problems))
    try:
        label_map = label_map_for(union, names or None)
    except LabelError as exc:
        raise DataCheckError(str(exc)) from None
    classes = label_map.classes
    if not names:
        names = default_class_names(max(classes, 2))
    infos = []
    for k, ((pair, scan), by_value) in enumerate(zip(opened, found)):
        stats = ScanStats.from_dict(values[2 * k])
        if label_map.is_identity:  # voxels of label 0, 1, ... up to this mask's highest
            top = max(by_value, default=0)
            counts = tuple(by_value.get(v, 0) for v in range(top + 1))
        else:  # voxels of class 0, 1, ...: the mapped values
            counts = tuple(by_value.get(v, 0) for v in label_map.values)
        infos.append(PairInfo(pair, scan.shape, str(scan.dtype),
                              str(scan.voxel_size) if scan.voxel_size else None, counts, stats))
    if classes < 2:
        only = union[0] if union else 0
        problems.append("every mask holds only background (label 0): label the structures to "
                        "segment (e.g. 1 = bone, 2 = pores)" if only == 0 else
                        f"every mask holds only the value {only}: label the background and the "
                        "structures to segment with different values")
    if problems:
        raise DataCheckError(_problem_text(problems))
    if not label_map.is_identity:
        notes.append(label_map.note(names))
        label_values = label_map.values
    else:
        label_values = tuple(range(max(classes, 2)))
    return DataSummary(tuple(infos), max(classes, 2), names[: max(classes, 2)], tuple(notes),
                       label_values)
