"""What prediction reports: progress records, each scan's result, the run's report, its JSON.

A run yields StatsProgress, ScanStarted, SliceProgress, ScanCleaning and ScanFinished records
and returns a PredictReport. Each process of a run sums up its share with `local_part`;
`combine` merges the shares (one, or one per torchrun process) into the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.io.outputs import make_dirs, write_json_file
from bone_apps.core.jobs.units import bytes_text

if TYPE_CHECKING:
    from bone_apps.core.predict.cleanup import CleanStep

HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class ScanStarted:
    """Prediction of one scan begins (index counts from 0 over all scans of the run)."""

    index: int
    scans: int
    scan: Path
    output: Path
    shape: tuple[int, int, int]
    batch: int
    device: str


@dataclass(frozen=True)
class SliceProgress:
    """Slices of the current scan written so far; `labels` is the (Y, X) slice just written."""

    index: int
    done: int
    total: int
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ScanCleaning:
    """Every slice of the current scan is labelled; the stack is being cleaned before it is saved."""

    index: int
    output: Path


@dataclass(frozen=True)
class ScanResult:
    """What prediction found in one scan, and what it cost.

    counts are voxels per class in the saved labels (after the threshold, and after the
    clean-up when there was one); confidence_sum is the sum of winning probabilities;
    reassigned counts voxels whose non-background winner fell below the threshold; histogram
    counts winning probabilities in 10 bins over [0, 1]. With a clean-up, counts_before_clean
    holds the counts before it and clean_steps what each of its operations changed.
    """

    scan: str
    output: str
    probabilities: tuple[str, ...]
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    confidence_sum: float
    reassigned: int
    histogram: tuple[int, ...]
    wall_s: float
    model_s: float
    batch: int
    window: tuple[int, ...]  # (D, H, W) of a chunk's output region
    chunks: int
    peak_open_slices: int
    peak_cached_slices: int
    rank: int = 0  # the torchrun process that predicted it
    counts_before_clean: tuple[int, ...] | None = None
    clean_steps: tuple[CleanStep, ...] = ()

    @property
    def voxels(self) -> int:
        return int(sum(self.counts))

    @property
    def clean_change(self) -> list[int] | None:
        """Voxels each class gained (+) or lost (-) in the clean-up; None without one."""
        if self.counts_before_clean is None:
            return None
        return [int(a - b) for a, b in zip(self.counts, self.counts_before_clean)]

    @property
    def fractions(self) -> list[float]:
        return [c / max(1, self.voxels) for c in self.counts]

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / max(1, self.voxels)

    @property
    def reassigned_fraction(self) -> float:
        return self.reassigned / max(1, self.voxels)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(voxels=self.voxels, fractions=self.fractions, mean_confidence=self.mean_confidence,
                    reassigned_fraction=self.reassigned_fraction, clean_change=self.clean_change)
        data["clean_steps"] = [asdict(step) for step in self.clean_steps]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ScanResult:
        names = [f.name for f in cls.__dataclass_fields__.values() if f.name in data]
        values = {k: tuple(data[k]) if isinstance(data[k], list) else data[k] for k in names}
        if values.get("clean_steps"):
            from bone_apps.core.predict.cleanup import CleanStep

            values["clean_steps"] = tuple(CleanStep(**step) for step in values["clean_steps"])
        return cls(**values)


@dataclass(frozen=True)
class ScanFinished:
    """One scan's label stack is complete and saved."""

    index: int
    result: ScanResult


PredictEvent = StatsProgress | ScanStarted | SliceProgress | ScanCleaning | ScanFinished




@dataclass(frozen=True)
class PredictReport:
    """The run's results: per-scan results, their totals, benchmarks and the model's metadata.

    In a torchrun job, rank 0's report holds every scan; the other ranks' hold their own.
    """

    scans: tuple[ScanResult, ...]
    class_names: tuple[str, ...]
    threshold: float
    meta_summary: str
    meta: dict
    config: dict
    wall_s: float
    model_s: float
    peak_rss_bytes: int
    peak_vram_bytes: int | None
    gpu_utilization: float | None
    device: str
    batch: int
    world_size: int = 1
    rank: int = 0

    @property
    def counts(self) -> list[int]:
        return [int(sum(s.counts[c] for s in self.scans)) for c in range(len(self.class_names))]

    @property
    def voxels(self) -> int:
        return int(sum(self.counts))

    @property
    def fractions(self) -> list[float]:
        return [c / max(1, self.voxels) for c in self.counts]

    @property
    def mean_confidence(self) -> float:
        return sum(s.confidence_sum for s in self.scans) / max(1, self.voxels)

    @property
    def reassigned_fraction(self) -> float:
        return sum(s.reassigned for s in self.scans) / max(1, self.voxels)

    @property
    def histogram(self) -> list[int]:
        return [int(sum(s.histogram[b] for s in self.scans)) for b in range(HISTOGRAM_BINS)]

    @property
    def clean_change(self) -> list[int] | None:
        """Voxels each class gained (+) or lost (-) in the clean-up of every scan; None without one."""
        changes = [s.clean_change for s in self.scans if s.clean_change is not None]
        if not changes:
            return None
        return [int(sum(change[c] for change in changes)) for c in range(len(self.class_names))]

    def clean_summary(self) -> dict | None:
        """The clean-up's options and what it changed over all scans; None when it was off."""
        change = self.clean_change
        if change is None:
            return None
        before = [int(sum((s.counts_before_clean or s.counts)[c] for s in self.scans))
                  for c in range(len(self.class_names))]
        return {"options": self.config.get("clean"), "counts_before": before, "change": change,
                "voxels_changed": int(sum(step.voxels for s in self.scans for step in s.clean_steps))}

    def to_dict(self) -> dict:
        return {
            "scans": [s.to_dict() for s in self.scans],
            "totals": {
                "class_names": list(self.class_names), "counts": self.counts, "voxels": self.voxels,
                "fractions": self.fractions, "mean_confidence": self.mean_confidence,
                "reassigned_fraction": self.reassigned_fraction, "threshold": self.threshold,
                "histogram": self.histogram,
                "histogram_edges": [b / HISTOGRAM_BINS for b in range(HISTOGRAM_BINS + 1)],
                "clean": self.clean_summary(),
            },
            "benchmark": {
                "wall_s": self.wall_s, "model_s": self.model_s, "peak_rss_bytes": self.peak_rss_bytes,
                "peak_vram_bytes": self.peak_vram_bytes, "gpu_utilization": self.gpu_utilization,
                "device": self.device, "batch": self.batch, "world_size": self.world_size,
            },
            "model": {"summary": self.meta_summary, "meta": self.meta},
            "config": self.config,
        }

    def text(self) -> str:
        """The report as a few readable lines (what the console and the window show)."""
        lines = []
        for s in self.scans:
            z, y, x = s.shape
            lines.append(f"{s.scan} -> {s.output}: {z}x{y}x{x} voxels in {s.wall_s:.1f} s")
        share = ", ".join(f"{name} {100 * f:.2f} % ({c:,})"
                          for name, f, c in zip(self.class_names, self.fractions, self.counts))
        lines.append(f"classes: {share}")
        clean = self.clean_summary()
        if clean is not None:
            from bone_apps.core.predict.cleanup import CleanOptions

            moved = ", ".join(f"{name} {delta:+,}" for name, delta in zip(self.class_names, clean["change"])
                              if delta)
            what = CleanOptions.from_dict(clean["options"] or {}).describe()
            lines.append(f"clean-up ({what}): {clean['voxels_changed']:,} voxels changed"
                         + (f" ({moved})" if moved else ""))
        lines.append(f"confidence: mean winning probability {self.mean_confidence:.4f}; "
                     f"{100 * self.reassigned_fraction:.2f} % of voxels reassigned to background "
                     f"(threshold {self.threshold:g})")
        total = max(1, self.voxels)
        bins = " ".join(f"{100 * h / total:.1f}" for h in self.histogram)
        lines.append(f"winning probability histogram (% of voxels in 0-0.1 ... 0.9-1): {bins}")
        util = "-" if self.gpu_utilization is None else f"{self.gpu_utilization:.0f} %"
        ram, vram = bytes_text(self.peak_rss_bytes, "-"), bytes_text(self.peak_vram_bytes, "-")
        lines.append(f"benchmark: wall {self.wall_s:.1f} s, model {self.model_s:.1f} s, peak RAM "
                     f"{ram}, peak VRAM {vram}, GPU use {util}, "
                     f"device {self.device}, batch {self.batch}"
                     + (f", {self.world_size} processes" if self.world_size > 1 else ""))
        lines.extend(self.meta_summary.splitlines())
        return "\n".join(lines)


def write_report_json(report: PredictReport, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the report as JSON, atomically and tagged as ours (outputs.write_json_file).

    Missing parent folders are created.

    Raises:
        OutputExistsError: `path` exists and `overwrite` is not set, or bone_apps did not write it.
        OutputWriteError: the disk is full or the folder cannot be written.
    """
    path = Path(path).expanduser()
    make_dirs(path.parent)
    return write_json_file(path, report.to_dict(), overwrite=overwrite)


def local_part(results: Sequence[tuple[int, ScanResult]], wall_s: float, usage: dict,
               devices: Sequence[str]) -> dict:
    """One process's share of a run as plain data (what torchrun's processes exchange).

    Args:
        results: (scan index, result) of the scans this process predicted.
        wall_s: the process's time so far.
        usage: ResourceMonitor.snapshot() (peak RAM and VRAM, mean GPU use).
        devices: the torch devices it ran on.
    """
    return {"results": [(i, r.to_dict()) for i, r in results], "wall_s": wall_s,
            "model_s": sum(r.model_s for _, r in results), **usage,
            "batch": max((r.batch for _, r in results), default=0), "device": ",".join(devices)}


def combine(parts: Sequence[dict], *, class_names: tuple[str, ...], threshold: float, meta_summary: str,
            meta: dict, config: dict, rank: int = 0) -> PredictReport:
    """The run's report from the shares of its processes (local_part; one per process)."""
    scans = sorted((i, ScanResult.from_dict(d)) for part in parts for i, d in part["results"])
    vram = [p["peak_vram_bytes"] for p in parts if p["peak_vram_bytes"] is not None]
    util = [p["mean_gpu_utilization"] for p in parts if p["mean_gpu_utilization"] is not None]
    return PredictReport(
        scans=tuple(r for _, r in scans), class_names=tuple(class_names), threshold=threshold,
        meta_summary=meta_summary, meta=meta, config=config,
        wall_s=max(p["wall_s"] for p in parts), model_s=sum(p["model_s"] for p in parts),
        peak_rss_bytes=max(p["peak_rss_bytes"] for p in parts),
        peak_vram_bytes=max(vram) if vram else None,
        gpu_utilization=sum(util) / len(util) if util else None,
        device=" ".join(sorted({p["device"] for p in parts})), batch=max(p["batch"] for p in parts),
        world_size=len(parts), rank=rank)
