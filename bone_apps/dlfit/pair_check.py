"""Quick checks of one scan/mask pair for the pairs table, run off the GUI thread.

Two stages so a row shows something at once: the headers (shape, pixel types, voxel size,
shape match) take milliseconds; counting the mask's labels streams the mask slice by slice
and stops between slices when asked, or as soon as the mask holds more values than a label
mask may (a scan chosen as the mask). Masks whose values are not 0..N-1 (e.g. 0/255) are
flagged as mapped, as core.labels maps them. The full check before fitting is the engine's
(core.pairs.check_pairs); this one only tells the user early.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.labels import MAX_LABEL_VALUES, label_map_for, too_many_values, value_preview
from bone_apps.core.io.volume import check_same_shape, open_volume


@dataclass(frozen=True)
class PairCheck:
    """What is known about one row's pair so far.

    `label_counts` is None while the mask is being counted, then the voxels of each value
    in `label_values` (the mask's distinct values, sorted); `mapped` says those values are not
    0..N-1 and become classes 0..N-1 in sorted order. `problem` is one plain sentence (empty
    when the pair is usable); `warning` is advice that does not block fitting.
    """

    key: int
    scan: str
    mask: str
    shape: tuple[int, int, int] | None = None
    scan_dtype: str = ""
    mask_dtype: str = ""
    voxel_size: str = ""
    label_counts: tuple[int, ...] | None = None
    label_values: tuple[int, ...] = ()
    mapped: bool = False
    problem: str = ""
    warning: str = ""

    @property
    def done(self) -> bool:
        return bool(self.problem) or self.label_counts is not None

    @property
    def labels(self) -> list[int]:
        """The mask values found (with at least one voxel)."""
        return [v for v, c in zip(self.label_values, self.label_counts or ()) if c]

    def summary(self) -> str:
        """One short line for the table cell."""
        if self.problem:  # the row shows the paths already; the tooltip has them in full
            text = self.problem
            for path, name in ((self.mask, "the mask"), (self.scan, "the scan")):
                if path.strip():
                    text = text.replace(str(Path(path).expanduser()), name)
            return f"✖ {text}"
        if self.shape is None:
            return "checking…"
        z, y, x = self.shape
        text = f"{z}×{y}×{x} · {self.scan_dtype}"
        if self.label_counts is None:
            return f"{text} · counting labels…"
        if not self.mapped:  # a mapping's warning lists the values itself
            text += f" · classes {','.join(map(str, self.labels))}"
        return f"⚠ {text} · {self.warning}" if self.warning else f"✔ {text}"

    def details(self) -> str:
        """Several lines for the tooltip: paths, types, voxel size, class fractions."""
        lines = [f"Scan: {self.scan}", f"Mask: {self.mask}"]
        if self.shape is not None:
            z, y, x = self.shape
            lines.append(f"{z} slices × {y} × {x} pixels; scan {self.scan_dtype}, mask "
                         f"{self.mask_dtype}; voxel size {self.voxel_size or 'not recorded'}")
        if self.label_counts:
            total = sum(self.label_counts) or 1
            lines.append(f"Voxels per {'value' if self.mapped else 'label'}: " + ", ".join(
                f"{v}: {100 * c / total:.1f} %" for v, c in zip(self.label_values, self.label_counts)
                if c))
        if self.problem or self.warning:
            lines.append(self.problem or self.warning)
        return "\n".join(lines)


def check_headers(key: int, scan: str, mask: str) -> PairCheck:
    """Open both volumes lazily (headers only) and compare their shapes."""
    result = PairCheck(key, scan, mask)
    if not scan.strip():
        return replace(result, problem="choose the scan of this row")
    if not mask.strip():
        return replace(result, problem="choose the mask of this row (the labels of the scan)")
    try:
        scan_volume = open_volume(Path(scan), role="scan")
        mask_volume = open_volume(Path(mask), role="mask")
        check_same_shape(scan_volume, mask_volume)
    except BoneAppsError as exc:
        return replace(result, problem=str(exc))
    voxel = str(scan_volume.voxel_size) if scan_volume.voxel_size else ""
    return replace(result, shape=scan_volume.shape, scan_dtype=str(scan_volume.dtype),
                   mask_dtype=str(mask_volume.dtype), voxel_size=voxel)


def count_labels(check: PairCheck, stop: threading.Event,
                 class_count: int | None = None) -> PairCheck | None:
    """Count the mask's voxels per value, slice by slice; None if stopped first.

    A mask with more than MAX_LABEL_VALUES values (a scan chosen as the mask) is a problem,
    found without reading the rest of it. Values that are not 0..N-1 (0/255, 1/2/3) are
    mapped to classes in sorted order, as fitting does (core.labels.label_map_for): a warning.
    `class_count` (when the user named the classes) makes more values than names a problem.
    """
    counts = np.zeros(0, dtype=np.int64)
    complete = True
    try:
        with open_volume(Path(check.mask), role="mask") as volume:
            for z in range(volume.shape[0]):
                if stop.is_set():
                    return None
                c = np.bincount(volume.read_slice(z).ravel())
                if c.size > counts.size:
                    counts = np.pad(counts, (0, c.size - counts.size))
                counts[: c.size] += c
                if np.count_nonzero(counts) > MAX_LABEL_VALUES:
                    complete = z == volume.shape[0] - 1
                    break
    except BoneAppsError as exc:
        return replace(check, problem=str(exc))
    values = [int(v) for v in np.flatnonzero(counts)]
    scan_like = too_many_values(check.mask, values, complete)
    if scan_like:
        return replace(check, label_counts=(), problem=scan_like)
    result = replace(check, label_values=tuple(values),
                     label_counts=tuple(int(counts[v]) for v in values))
    extra = [v for v in values if class_count and v >= class_count]
    if extra and len(values) > class_count:
        return replace(result, problem=(
            f"the mask holds label(s) {', '.join(map(str, extra))} but only {class_count} classes "
            "are named: name every label in Advanced mode or fix the mask"))
    if values in ([], [0]):
        return replace(result, warning="only background: this mask teaches nothing to find")
    if extra:  # as many values as names or fewer: the names take the sorted values in order
        return replace(result, mapped=True, warning=(
            f"values {value_preview(values)} will be mapped to classes in sorted order; all masks "
            f"together must hold {class_count} values, one per named class"))
    if not label_map_for(values).is_identity:
        return replace(result, mapped=True, warning=(
            f"values {value_preview(values)} will be mapped to classes 0..{len(values) - 1} in "
            "sorted order; predictions keep these values"))
    return result


def check_queue(queue: deque, stop: threading.Event) -> Iterator[PairCheck]:
    """Check (key, scan, mask, class_count) items from `queue` until it is empty or `stop` is set.

    Yields each pair twice: after the headers, then with the label counts.
    """
    while queue and not stop.is_set():
        key, scan, mask, class_count = queue.popleft()
        check = check_headers(key, scan, mask)
        yield check
        if not check.problem:
            counted = count_labels(check, stop, class_count)
            if counted is not None:
                yield counted
