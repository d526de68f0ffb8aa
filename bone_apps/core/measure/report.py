"""What `bone measure` reports: per-label results, their JSON form, the terminal table, the CSV.

Keys are the standard names of Bouxsein et al. (2010); lengths are in mm, areas in mm^2,
volumes in mm^3 (UNITS).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

UNITS = {
    "BV/TV": "1", "TV": "mm^3", "BV": "mm^3", "BS": "mm^2", "BS/BV": "1/mm",
    "Tb.Th": "mm", "Tb.Th.SD": "mm", "Tb.Sp": "mm", "Tb.Sp.SD": "mm", "Tb.N": "1/mm",
    "Conn": "1", "Conn.D": "1/mm^3", "Euler.delta": "1",
    "Ct.Th": "mm", "Tt.Ar": "mm^2", "Ct.Ar": "mm^2", "Ma.Ar": "mm^2", "Ct.Ar/Tt.Ar": "1",
}
TABLE_KEYS = ("BV/TV", "TV", "BV", "BS/BV", "Tb.Th", "Tb.Th.SD", "Tb.Sp", "Tb.Sp.SD", "Tb.N",
              "Conn", "Conn.D")
CORTICAL_KEYS = ("Ct.Th", "Tt.Ar", "Ct.Ar", "Ma.Ar", "Ct.Ar/Tt.Ar")
CSV_KEYS = ("label", "name", *TABLE_KEYS, "BS", "Euler.delta", *CORTICAL_KEYS)


@dataclass(frozen=True)
class Distribution:
    """Local thickness of a structure (or of its background: spacing) over its voxels.

    edges_mm: histogram bin edges (one smallest-voxel-edge wide); counts: voxels per bin.
    """

    mean_mm: float
    sd_mm: float
    max_mm: float
    edges_mm: tuple[float, ...]
    counts: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: np.ndarray, thickness_units: np.ndarray,
                    unit_mm: float) -> Distribution | None:
        """From voxel counts per thickness value (thickness_units: in smallest voxel edges)."""
        total = int(counts.sum())
        if total == 0:
            return None
        weights = counts.astype(np.float64)
        mean = float(weights @ thickness_units) / total
        sd = math.sqrt(max(0.0, float(weights @ (thickness_units - mean) ** 2) / total))
        present = np.flatnonzero(counts)
        top = float(thickness_units[present[-1]])
        bins = np.bincount(np.floor(thickness_units[present]).astype(np.int64), weights=weights[present],
                           minlength=int(math.floor(top)) + 1)
        edges = tuple(float(e) for e in np.arange(bins.size + 1) * unit_mm)
        return cls(mean * unit_mm, sd * unit_mm, top * unit_mm, edges,
                   tuple(int(round(c)) for c in bins))

    def histogram(self) -> dict:
        return {"edges_mm": list(self.edges_mm), "counts": list(self.counts)}


@dataclass(frozen=True)
class CorticalAreas:
    """Slice-by-slice areas (mm^2) of the slices holding cortex, and their means."""

    z: tuple[int, ...]
    total: tuple[float, ...]
    cortical: tuple[float, ...]

    @property
    def marrow(self) -> tuple[float, ...]:
        return tuple(t - c for t, c in zip(self.total, self.cortical))

    @property
    def fraction(self) -> tuple[float, ...]:
        return tuple(c / t for t, c in zip(self.total, self.cortical))

    def means(self) -> dict[str, float | None]:
        def mean(values: tuple[float, ...]) -> float | None:
            return float(np.mean(values)) if values else None

        return {"Tt.Ar": mean(self.total), "Ct.Ar": mean(self.cortical),
                "Ma.Ar": mean(self.marrow), "Ct.Ar/Tt.Ar": mean(self.fraction)}

    def per_slice(self) -> dict[str, list]:
        return {"z": list(self.z), "Tt.Ar": list(self.total), "Ct.Ar": list(self.cortical),
                "Ma.Ar": list(self.marrow), "Ct.Ar/Tt.Ar": list(self.fraction)}


@dataclass(frozen=True)
class LabelMorphometry:
    """The measures of one label (None where undefined, e.g. no voxels or no background)."""

    label: int
    name: str
    voxels: int
    tv_voxels: int
    voxel_mm3: float
    bs_mm2: float | None
    thickness: Distribution | None
    spacing: Distribution | None
    euler_delta: float | None
    cortical: CorticalAreas | None = None

    @property
    def tv_mm3(self) -> float:
        return self.tv_voxels * self.voxel_mm3

    @property
    def bv_mm3(self) -> float:
        return self.voxels * self.voxel_mm3

    def values(self) -> dict[str, float | None]:
        """The scalar measures by their standard names."""
        th = self.thickness.mean_mm if self.thickness else None
        sp = self.spacing.mean_mm if self.spacing else None
        conn = None if self.euler_delta is None else 1.0 - self.euler_delta
        values = {
            "BV/TV": self.voxels / self.tv_voxels if self.tv_voxels else None,
            "TV": self.tv_mm3,
            "BV": self.bv_mm3,
            "BS": self.bs_mm2,
            "BS/BV": self.bs_mm2 / self.bv_mm3 if self.bs_mm2 is not None and self.voxels else None,
            "Tb.Th": th,
            "Tb.Th.SD": self.thickness.sd_mm if self.thickness else None,
            "Tb.Sp": sp,
            "Tb.Sp.SD": self.spacing.sd_mm if self.spacing else None,
            "Tb.N": 1.0 / (th + sp) if th is not None and sp is not None else None,
            "Conn": conn,
            "Conn.D": conn / self.tv_mm3 if conn is not None and self.tv_voxels else None,
            "Euler.delta": self.euler_delta,
        }
        if self.cortical is not None:
            values["Ct.Th"] = th
            values.update(self.cortical.means())
        return values

    def to_dict(self) -> dict:
        data: dict = {"label": self.label, "name": self.name, "voxels": self.voxels,
                      **self.values()}
        data["Tb.Th.histogram"] = self.thickness.histogram() if self.thickness else None
        data["Tb.Sp.histogram"] = self.spacing.histogram() if self.spacing else None
        if self.cortical is not None:
            data["per_slice"] = self.cortical.per_slice()
        return data


@dataclass(frozen=True)
class MorphometryResult:
    """Measures of every chosen label of a mask, in physical units."""

    mask: str
    roi: str | None
    shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    voxel_size_from: str  # "file" or "option"
    labels: list[LabelMorphometry]
    maps: list[str] = field(default_factory=list)

    def label(self, value: int) -> LabelMorphometry:
        """The result of one label."""
        return next(entry for entry in self.labels if entry.label == value)

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        z, y, x = self.voxel_size_um
        return {
            "mask": self.mask,
            "roi": self.roi,
            "shape": list(self.shape),
            "voxel_size_um": {"z": z, "y": y, "x": x},
            "voxel_size_from": self.voxel_size_from,
            "units": dict(UNITS),
            "labels": [entry.to_dict() for entry in self.labels],
            "maps": list(self.maps),
        }

    def table(self) -> str:
        """The measures as a plain text table: one row per measure, one column per label."""
        keys = list(TABLE_KEYS)
        if any(entry.cortical is not None for entry in self.labels):
            keys += list(CORTICAL_KEYS)
        rows = [("measure", "unit", *(f"{e.label} {e.name}" for e in self.labels))]
        for key in keys:
            rows.append((key, UNITS[key], *(_number(e.values().get(key, "")) for e in self.labels)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def csv_text(self) -> str:
        """One row per label, columns named as the JSON keys (units in UNITS)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_KEYS)
        for entry in self.labels:
            values = {"label": entry.label, "name": entry.name, **entry.values()}
            writer.writerow(["" if values.get(key) is None else values[key] for key in CSV_KEYS])
        return buffer.getvalue()


def _number(value: object) -> str:
    if value is None:
        return "-"
    if value == "":
        return ""
    return f"{value:.4g}"
