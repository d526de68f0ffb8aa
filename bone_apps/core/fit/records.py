"""What fitting reports: the progress records `fit` yields and the result it ends with.

While the scans are checked, fit yields the data room's StatsProgress (as prediction does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.data.normalize import StatsProgress


@dataclass(frozen=True)
class FitMessage:
    """A line for the user (setup steps, notes, warnings)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class StepProgress:
    """One batch done. `epoch` is 1-based; `loss` is the phase's running mean so far (read
    from the device at most twice a second, else the last value read)."""

    epoch: int
    epochs: int
    phase: str
    step: int
    steps: int
    loss: float | None
    lr: float


@dataclass(frozen=True)
class EpochEnd:
    """One epoch finished (1-based `epoch`); `row` is its log.csv row."""

    epoch: int
    epochs: int
    lr: float
    train_loss: float
    val_loss: float
    train_iou: float
    val_iou: float
    val_iou_per_class: dict[str, float | None]
    epoch_seconds: float
    improved: bool
    resources: dict
    row: dict


@dataclass(frozen=True)
class FitResult:
    """How a run ended. status: "completed" or "stopped"."""

    out: Path
    status: str
    epochs_done: int
    best_epoch: int | None
    best_val_iou: float | None
    model_path: Path | None
    checkpoint_path: Path | None
    summary: dict
    resume_hint: str | None = None


@dataclass(frozen=True)
class FitFinished:
    """The last record of a run."""

    result: FitResult


FitEvent = FitMessage | StatsProgress | StepProgress | EpochEnd | FitFinished

