"""What DLFit's experiment dialog says about a running cross-validation or benchmark: which fit
of how many, what that fit is doing (epoch and step, prediction, scoring), and a log line per
fit and per scored scan. No Qt: it follows the core records (core.evaluate.runs and the fit,
prediction and scoring records they wrap) and the dialog shows its state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.evaluate.runs import RunProgress, RunStarted, ScanScored
from bone_apps.core.fit import records as fit_records
from bone_apps.core.predict import reports as predict_records
from bone_apps.core.score.scoring import ScoreProgress

ACTIONS = {"fit": "fitting", "refit": "fitting again (the earlier attempt saved no checkpoint)",
           "resume": "resuming its fit from the checkpoint", "kept": "fit finished earlier, kept"}


@dataclass
class ProgressState:
    """The run on show: `run_text` ("Fit 2 of 4: fold 1, seed 42 — fitting"), `runs_done` of
    `runs`, and the current stage of that run with its own `done` of `total` (0 of 0: busy)."""

    run_text: str = ""
    runs_done: int = 0
    runs: int = 0
    stage_text: str = ""
    done: int = 0
    total: int = 0


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


class ExperimentProgress:
    """Follows an experiment's records; `follow(record)` updates `state` and returns the log
    lines the record adds."""

    def __init__(self) -> None:
        self.state = ProgressState()
        self._scan = ""
        self._fitted = False  # the run's fit is over: statistics are now the test scans'

    def follow(self, record: object) -> list[str]:
        s = self.state
        if isinstance(record, RunStarted):
            s.runs, s.runs_done = record.total, record.index
            s.run_text = (f"Fit {record.index + 1} of {record.total}: {record.label} — "
                          f"{ACTIONS[record.action]}")
            self._stage("Starting…")
            self._fitted = record.action == "kept"
            return [f"[{record.index + 1}/{record.total}] {record.label}: {ACTIONS[record.action]} "
                    f"({Path(record.out).name}/)"]
        if isinstance(record, RunProgress):
            return self._inner(record.event)
        if isinstance(record, ScanScored):
            row = record.row
            return [f"  {row['scan']}: mIoU {_score(row['miou'])} [mDice {_score(row['mdice'])}]"]
        result = getattr(record, "result", None)
        if result is not None and hasattr(result, "status"):  # CVFinished, BenchFinished
            if result.status == "completed":
                s.runs_done = s.runs
                self._stage("Finished.")
            return []
        text = getattr(record, "text", None)  # CVMessage, BenchMessage
        return [text] if isinstance(text, str) else []

    def _stage(self, text: str, done: int = 0, total: int = 0) -> None:
        self.state.stage_text, self.state.done, self.state.total = text, done, total

    def _inner(self, event: object) -> list[str]:
        """A record of the run's fit, prediction or scoring."""
        if isinstance(event, fit_records.StepProgress):
            phase = "training" if event.phase == "train" else "validation"
            self._stage(f"Epoch {event.epoch} of {event.epochs}: {phase} step {event.step} of "
                        f"{event.steps}", event.step, event.steps)
        elif isinstance(event, fit_records.EpochEnd):
            return [f"  epoch {event.epoch}/{event.epochs}: validation IoU {_score(event.val_iou)}"
                    + (" (best so far)" if event.improved else "")]
        elif isinstance(event, StatsProgress):
            what = ("Statistics of the test scans" if self._fitted
                    else "Checking the scans and their statistics")
            self._stage(f"{what}: {event.done} of {event.total}", event.done, event.total)
        elif isinstance(event, fit_records.FitFinished):
            self._fitted = True
        elif isinstance(event, fit_records.FitMessage):
            if event.level != "info":  # setup lines are in the fit's fit.log
                return [f"  {event.level}: {event.text}"]
        elif isinstance(event, predict_records.ScanStarted):
            self._scan = Path(event.scan).name
            self._stage(f"Predicting {self._scan}", 0, event.shape[0])
        elif isinstance(event, predict_records.SliceProgress):
            self._stage(f"Predicting {self._scan}: slice {event.done} of {event.total}",
                        event.done, event.total)
        elif isinstance(event, ScoreProgress):
            self._stage(f"Scoring: slice {event.done} of {event.total}", event.done, event.total)
        return []
