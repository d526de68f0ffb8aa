"""Clean-up of predicted label masks: keep a class's largest piece, drop small islands, fill
small enclosed holes.

Connectivity follows the morphometry (core/measure/euler.py): the pieces of a class are
26-connected, background pockets 6-connected, so a hole never leaks through a diagonal gap.

* Largest (`largest`): every piece of the class but the largest is reassigned.
* Islands (`min_island`): every piece of a non-zero class with fewer voxels is reassigned,
  class by class in increasing label order.
* Reassigned voxels take the label that touches the piece most often across its faces (the
  surrounding label: background for a speck in the air, pores for a fleck of bone inside a
  pore; ties go to the lower label). A piece that touches nothing else becomes background.
* Holes (`fill_holes`): a 6-connected pocket of background that does not reach the volume's
  edge, touches a single class and has fewer voxels becomes that class. Pockets between two
  classes (say bone and pores) are left as they are.

The whole mask is cleaned in memory: about 10 bytes per voxel (a 512^3 mask needs ~1.3 GB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io import formats
from bone_apps.core.io.outputs import absolute
from bone_apps.core.io.volume import Volume, open_volume

_PIECES = np.ones((3, 3, 3), dtype=bool)  # 26-connected
_POCKETS = ndimage.generate_binary_structure(3, 1)  # 6-connected
_BLOCK = 1 << 22


class CleanError(BoneAppsError):
    """A clean-up option or output does not suit the mask."""


@dataclass(frozen=True)
class CleanOptions:
    """What to clean.

    Attributes:
        largest: classes of which only the largest 26-connected piece is kept.
        min_island: pieces of a non-zero class with fewer voxels are reassigned (0: off).
        fill_holes: enclosed background pockets of one class with fewer voxels are filled (0: off).
    """

    largest: tuple[int, ...] = ()
    min_island: int = 0
    fill_holes: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> CleanOptions:
        """The options as `dataclasses.asdict` wrote them (e.g. in a prediction report)."""
        return cls(largest=tuple(int(v) for v in data.get("largest") or ()),
                   min_island=int(data.get("min_island") or 0), fill_holes=int(data.get("fill_holes") or 0))

    @property
    def active(self) -> bool:
        """True when at least one operation is chosen."""
        return bool(self.largest or self.min_island or self.fill_holes)

    def describe(self) -> str:
        """The chosen operations in a few words, e.g. "islands under 100 voxels removed"."""
        parts = []
        if self.largest:
            parts.append("largest piece of label " + ", ".join(str(v) for v in sorted(set(self.largest)))
                         + " kept")
        if self.min_island:
            parts.append(f"islands under {self.min_island:,} voxels removed")
        if self.fill_holes:
            parts.append(f"holes under {self.fill_holes:,} voxels filled")
        return "; ".join(parts) or "nothing"


@dataclass(frozen=True)
class CleanStep:
    """What one operation changed in one class."""

    operation: str  # "largest", "island" or "hole"
    label: int
    pieces: int
    voxels: int


@dataclass(frozen=True)
class CleanReport:
    """Every change made, and where the result was written."""

    steps: list[CleanStep] = field(default_factory=list)
    output: str | None = None

    @property
    def voxels_changed(self) -> int:
        return sum(step.voxels for step in self.steps)

    def summary(self) -> str:
        """One line per change, or a line saying there was none."""
        if not self.steps:
            return "nothing needed cleaning."
        words = {"largest": ("other piece", "removed (largest kept)"),
                 "island": ("island", "removed"), "hole": ("hole", "filled")}

        def line(step: CleanStep) -> str:
            noun, verb = words[step.operation]
            plural = "s" if step.pieces != 1 else ""
            voxels = "voxel" if step.voxels == 1 else "voxels"
            return f"label {step.label}: {step.pieces} {noun}{plural} {verb}, {step.voxels:,} {voxels}"

        return "\n".join(line(step) for step in self.steps)


def clean_labels(labels: np.ndarray, options: CleanOptions) -> tuple[np.ndarray, CleanReport]:
    """Clean a (Z, Y, X) label array; returns the cleaned copy and what changed."""
    _check(options)
    out = labels.copy()
    steps: list[CleanStep] = []
    for label in sorted(set(options.largest)):
        pieces, sizes = _pieces(out == label)
        if sizes.size > 1:
            drop = np.ones(sizes.size + 1, dtype=bool)
            drop[0] = False
            drop[1 + int(np.argmax(sizes))] = False
            steps.append(_reassign(out, pieces, drop, "largest", label))
    if options.min_island > 0:
        for label in (int(v) for v in np.unique(out) if v != 0):
            pieces, sizes = _pieces(out == label)
            drop = np.concatenate(([False], sizes < options.min_island))
            if drop.any():
                steps.append(_reassign(out, pieces, drop, "island", label))
    if options.fill_holes > 0:
        steps += _fill_holes(out, options.fill_holes)
    return out, CleanReport([s for s in steps if s.voxels])


def clean_mask(mask: str | os.PathLike | Volume, out: str | os.PathLike, options: CleanOptions,
               overwrite: bool = False) -> CleanReport:
    """Clean a mask on disk and write the result to `out` (never onto the mask itself).

    Raises:
        VolumeError: the mask cannot be read.
        CleanError: no operation chosen, or `out` is (or holds, or lies inside) the mask.
        OutputExistsError / ForeignFilesError: `out` exists (without overwrite) or is not ours.
    """
    from bone_apps.core.io.outputs import check_target
    from bone_apps.core.io.writer import write_volume

    _check(options)
    volume = mask if isinstance(mask, Volume) else open_volume(mask, role="mask")
    source, target = absolute(volume.path), absolute(out)
    if source == target or source.is_relative_to(target) or target.is_relative_to(source):
        raise CleanError(f"{out} is, holds or lies inside the mask {volume.path}: choose another output "
                         "(the mask is never overwritten).")
    check_target(target, overwrite)
    cleaned, report = clean_labels(volume.read_slab(0, volume.shape[0]), options)
    names = None if formats.is_tiff_name(out) else volume.slice_names
    written = write_volume(out, cleaned, slice_names=names, voxel_size=volume.voxel_size,
                           overwrite=overwrite)
    return CleanReport(report.steps, str(written))


def check_sizes(options: CleanOptions) -> None:
    """Raises CleanError when an island or hole size is negative."""
    if options.min_island < 0 or options.fill_holes < 0:
        raise CleanError(f"sizes must be 0 or more voxels (island {options.min_island}, hole "
                         f"{options.fill_holes}): give a positive number of voxels.")


def _check(options: CleanOptions) -> None:
    check_sizes(options)
    if not options.active:
        raise CleanError("no clean-up was asked for: give --largest, --min-island or --fill-holes.")


def _pieces(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected pieces (ids from 1) and their sizes (index i: piece i + 1)."""
    pieces, count = ndimage.label(binary, structure=_PIECES)
    return pieces, _sizes(pieces, count)[1:]


def _sizes(ids: np.ndarray, count: int) -> np.ndarray:
    """Voxels per id 0..count, in blocks (bincount widens the ids to 8 bytes each)."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    flat = ids.reshape(-1)
    for start in range(0, flat.size, _BLOCK):
        sizes += np.bincount(flat[start:start + _BLOCK], minlength=count + 1)
    return sizes


def _marked(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table[ids] for a bool table, in blocks (indexing widens the ids to 8 bytes each)."""
    out = np.empty(ids.shape, dtype=bool)
    flat_ids, flat_out = ids.reshape(-1), out.reshape(-1)
    for start in range(0, flat_ids.size, _BLOCK):
        flat_out[start:start + _BLOCK] = table[flat_ids[start:start + _BLOCK]]
    return out


def _face_pairs(pieces: np.ndarray, marked: np.ndarray,
                labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(piece id, label of the neighbour) for every face between a marked voxel and a voxel
    outside its piece."""
    ids, neighbours = [], []
    for axis in range(3):
        for a, b in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis], dst[axis] = a, b
            here, there = pieces[tuple(src)], pieces[tuple(dst)]
            hit = marked[tuple(src)] & (here != there)
            ids.append(here[hit])
            neighbours.append(labels[tuple(dst)][hit])
    return np.concatenate(ids), np.concatenate(neighbours)


def _majority(ids: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """For each piece id, the most frequent label among its face neighbours (ties: lower label)."""
    if not ids.size:
        return {}
    span = int(labels.max()) + 1
    codes, counts = np.unique(ids.astype(np.int64) * span + labels, return_counts=True)
    piece, label = codes // span, codes % span
    order = np.lexsort((label, -counts, piece))  # per piece: most counts first, then lowest label
    piece, label = piece[order], label[order]
    first = np.concatenate(([True], piece[1:] != piece[:-1]))
    return dict(zip(piece[first].tolist(), label[first].tolist()))


def _reassign(out: np.ndarray, pieces: np.ndarray, drop: np.ndarray, operation: str,
              label: int) -> CleanStep:
    """Give every piece marked in `drop` (indexed by piece id) its surrounding label."""
    changed = _marked(drop, pieces)
    ids, neighbour_labels = _face_pairs(pieces, changed, out)
    target = _majority(ids, neighbour_labels)
    lut = np.zeros(drop.size, dtype=out.dtype)
    for piece in np.flatnonzero(drop).tolist():
        lut[piece] = target.get(piece, 0)
    out[changed] = lut[pieces[changed]]
    return CleanStep(operation, label, int(np.count_nonzero(drop)), int(np.count_nonzero(changed)))


def _fill_holes(out: np.ndarray, limit: int) -> list[CleanStep]:
    pockets, count = ndimage.label(out == 0, structure=_POCKETS)
    if count == 0:
        return []
    sizes = _sizes(pockets, count)
    small = sizes < limit
    small[0] = False
    edge = np.zeros(count + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            edge[np.unique(np.take(pockets, end, axis=axis))] = True
    small &= ~edge
    if not small.any():
        return []
    ids, neighbour_labels = _face_pairs(pockets, _marked(small, pockets), out)
    span = int(out.max()) + 1
    piece, label = np.divmod(np.unique(ids.astype(np.int64) * span + neighbour_labels), span)
    kinds = np.bincount(piece, minlength=count + 1)
    single = kinds[piece] == 1
    lut = np.zeros(count + 1, dtype=out.dtype)
    lut[piece[single]] = label[single]
    fill = np.zeros(count + 1, dtype=bool)
    fill[piece[single]] = True
    changed = _marked(fill, pockets)
    out[changed] = lut[pockets[changed]]
    steps = []
    for value in np.unique(label[single]).tolist():
        holes = piece[single][label[single] == value]
        steps.append(CleanStep("hole", int(value), int(holes.size), int(sizes[holes].sum())))
    return steps
