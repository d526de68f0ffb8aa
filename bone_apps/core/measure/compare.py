"""Morphometry of two masks side by side: a reference (say a manual segmentation) and a prediction.

Both are measured with the same options and the same voxel size; each label's measures are
set next to each other with the prediction's difference in percent of the reference.
"""

from __future__ import annotations

import csv
import io
import math
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bone_apps.core.io.volume import Volume, open_volume
from bone_apps.core.measure.report import UNITS, LabelMorphometry, MorphometryResult

if TYPE_CHECKING:
    from bone_apps.core.measure.morphometry import MeasureOptions

# The measures a window shows for each label (every other one is in the JSON).
KEY_MEASURES = ("BV/TV", "BS/BV", "Tb.Th", "Tb.Sp", "Tb.N", "Conn.D")
COMPARISON_CSV_KEYS = ("label", "name", "measure", "unit", "reference", "prediction", "difference_percent")


def measure_text(value: float | None) -> str:
    """A measure as shown in tables: four significant digits, "—" where it is undefined."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.4g}"


def measure_heading(key: str) -> str:
    """A measure's name with its unit, e.g. "Tb.Th (mm)" ("BV/TV" has none)."""
    unit = UNITS.get(key, "1")
    return key if unit == "1" else f"{key} ({unit})"


def difference_percent(reference: float | None, prediction: float | None) -> float | None:
    """(prediction - reference) in percent of the reference; None where either is undefined or
    the reference is 0."""
    if reference is None or prediction is None or reference == 0:
        return None
    return 100.0 * (prediction - reference) / abs(reference)


def difference_text(percent: float | None) -> str:
    """A difference as shown in tables, e.g. "-0.9 %"."""
    return "—" if percent is None else f"{percent:+.1f} %"


@dataclass(frozen=True)
class MeasureRow:
    """One measure of one label in both masks."""

    label: int
    name: str
    key: str
    reference: float | None
    prediction: float | None

    @property
    def unit(self) -> str:
        return UNITS.get(self.key, "1")

    @property
    def difference_percent(self) -> float | None:
        return difference_percent(self.reference, self.prediction)


@dataclass(frozen=True)
class PairProgress:
    """Steps done out of the steps of both measurements; `mask` ("reference" or "prediction")
    is the one under way."""

    mask: str
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class MorphometryComparison:
    """The measures of a reference and a prediction, label by label."""

    reference: MorphometryResult
    prediction: MorphometryResult

    def labels(self) -> list[tuple[int, str]]:
        """(label, name) measured in either mask, in label order."""
        named = {e.label: e.name for e in self.prediction.labels}
        named.update({e.label: e.name for e in self.reference.labels})
        return sorted(named.items())

    def rows(self, keys: tuple[str, ...] = KEY_MEASURES) -> list[MeasureRow]:
        """For each label, one row per measure in `keys`."""
        rows = []
        for label, name in self.labels():
            ref, pred = _entry(self.reference, label, name), _entry(self.prediction, label, name)
            ref_values, pred_values = ref.values(), pred.values()
            rows += [MeasureRow(label, name, key, ref_values.get(key), pred_values.get(key)) for key in keys]
        return rows

    def to_dict(self) -> dict:
        """Plain data for JSON: both results whole, and the compared measures."""
        return {
            "reference": self.reference.to_dict(),
            "prediction": self.prediction.to_dict(),
            "comparison": [{"label": r.label, "name": r.name, "measure": r.key, "unit": r.unit,
                            "reference": r.reference, "prediction": r.prediction,
                            "difference_percent": r.difference_percent} for r in self.rows()],
        }

    def csv_text(self) -> str:
        """One row per label and measure (columns COMPARISON_CSV_KEYS)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COMPARISON_CSV_KEYS)
        for r in self.rows():
            writer.writerow([r.label, r.name, r.key, r.unit, *("" if v is None else v for v in (
                r.reference, r.prediction, r.difference_percent))])
        return buffer.getvalue()


def _entry(result: MorphometryResult, label: int, name: str) -> LabelMorphometry:
    """The label's measures, or those of an absent label (BV/TV 0, the rest undefined)."""
    found = next((e for e in result.labels if e.label == label), None)
    if found is not None:
        return found
    tv = result.labels[0].tv_voxels if result.labels else 0
    voxel_mm3 = math.prod(result.voxel_size_um) / 1e9
    return LabelMorphometry(label, name, 0, tv, voxel_mm3, None, None, None, None)


def compare_stacks(reference: str | os.PathLike | Volume, prediction: str | os.PathLike | Volume,
                   options: MeasureOptions | None = None, stop: threading.Event | None = None,
                   ) -> Generator[PairProgress, None, MorphometryComparison]:
    """Measure a reference and a prediction with the same options, yielding progress.

    Without a voxel size in `options`, each mask's recorded one is used; a mask that records
    none takes the other's.

    Raises:
        MorphometryError: neither mask records a voxel size, or they record different ones.
        VolumeError, LabelError, Cancelled: as `measure_stacks`.
    """
    from bone_apps.core.measure.morphometry import MeasureOptions

    options = options or MeasureOptions()
    stop = stop or threading.Event()
    masks = {"reference": reference, "prediction": prediction}
    volumes = {k: v if isinstance(v, Volume) else open_volume(v, role="mask") for k, v in masks.items()}
    try:
        return (yield from _measure_both(volumes, options, stop))
    finally:
        for which, volume in volumes.items():
            if volume is not masks[which]:
                volume.close()


def _measure_both(volumes: dict[str, Volume], options: MeasureOptions, stop: threading.Event,
                  ) -> Generator[PairProgress, None, MorphometryComparison]:
    from bone_apps.core.measure.morphometry import MorphometryError, measure_stacks

    if options.voxel_size_um is None:
        sizes = {k: v.voxel_size for k, v in volumes.items()}
        known = {k: (float(s.z), float(s.y), float(s.x)) for k, s in sizes.items() if s is not None}
        if not known:
            raise MorphometryError(f"neither {volumes['reference'].path} nor {volumes['prediction'].path} "
                                   "records its voxel size: give it in micrometres with --voxel-size.")
        first, *others = known.values()
        if any(not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(first, o)) for o in others):
            ref, pred = known["reference"], known["prediction"]
            raise MorphometryError(
                f"{volumes['reference'].path} records {_size(ref)} voxels but "
                f"{volumes['prediction'].path} {_size(pred)}: give the voxel size to use in "
                "micrometres with --voxel-size.")
        if len(known) < len(volumes):
            options = replace(options, voxel_size_um=first)
    results = {}
    before = 0  # steps of the reference, once it is measured
    for which, volume in volumes.items():
        job = measure_stacks(volume, options, stop=stop)
        while True:
            try:
                step = next(job)
            except StopIteration as done:
                results[which] = done.value
                break
            # Steps over both masks; the prediction's are taken to be as many as the reference's
            # until they are known.
            if which == "reference":
                yield PairProgress(which, step.stage, step.done, 2 * step.total)
            else:
                yield PairProgress(which, step.stage, before + step.done, before + step.total)
            before = step.total if which == "reference" else before
    return MorphometryComparison(results["reference"], results["prediction"])


def _size(um: tuple[float, float, float]) -> str:
    z, y, x = um
    return f"{z:g} x {y:g} x {x:g} um"

