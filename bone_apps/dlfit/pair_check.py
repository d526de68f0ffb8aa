"""Quick checks of one scan/mask pair for the pairs table, run off the GUI thread.

Two stages so a row shows something at once: the headers (shape, pixel types, voxel size,
shape match) take milliseconds; counting the mask's labels streams the mask slice by slice
and stops between slices when asked. The full check before fitting is the engine's
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
from bone_apps.core.volume import check_same_shape, open_volume


@dataclass(frozen=True)
class PairCheck:
    """What is known about one row's pair so far.

    `labels` is None while the mask is being counted; `problem` is one plain sentence
    (empty when the pair is usable); `warning` is advice that does not block fitting.
    """

    key: int
    scan: str
    mask: str
    shape: tuple[int, int, int] | None = None
    scan_dtype: str = ""
    mask_dtype: str = ""
    voxel_size: str = ""
    label_counts: tuple[int, ...] | None = None
    problem: str = ""
    warning: str = ""

    @property
    def done(self) -> bool:
        return bool(self.problem) or self.label_counts is not None

    @property
    def labels(self) -> list[int]:
        return [i for i, c in enumerate(self.label_counts or ()) if c]

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
            lines.append("Voxels per label: " + ", ".join(
                f"{i}: {100 * c / total:.1f} %" for i, c in enumerate(self.label_counts) if c))
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
    """Count the mask's voxels per label, slice by slice; None if stopped first.

    `class_count` (when the user named the classes) makes labels beyond it a problem.
    """
    counts = np.zeros(0, dtype=np.int64)
    try:
        with open_volume(Path(check.mask), role="mask") as volume:
            for z in range(volume.shape[0]):
                if stop.is_set():
                    return None
                c = np.bincount(volume.read_slice(z).ravel())
                if c.size > counts.size:
                    counts = np.pad(counts, (0, c.size - counts.size))
                counts[: c.size] += c
    except BoneAppsError as exc:
        return replace(check, problem=str(exc))
    result = replace(check, label_counts=tuple(int(c) for c in counts))
    extra = [lab for lab in result.labels if class_count and lab >= class_count]
    if extra:
        return replace(result, problem=(
            f"the mask holds label(s) {', '.join(map(str, extra))} but only {class_count} classes "
            "are named: name every label in Advanced mode or fix the mask"))
    if result.labels in ([], [0]):
        return replace(result, warning="only background: this mask teaches nothing to find")
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
