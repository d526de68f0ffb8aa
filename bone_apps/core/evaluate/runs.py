"""One run of an experiment: an ordinary fit, then its held-out scans predicted and scored.

Each run of `bone cv` (a fold x seed) and `bone bench` (a configuration) is a plain fitting
run in its own folder, DIR/<key>/ (model.pth, split.json, config.json, logs), made by
core.fit exactly as `bone fit` makes it; the held-out scans are then predicted into
DIR/<key>/pred/<scan> by core.predict with the settings the fit validated, and scored
against their masks by core.scoring. A run is resumable: a finished fit is kept, an
unfinished one continues from its checkpoint (core.fit's own resume), a finished label stack
is kept, and the scores are always counted again from the files on disk.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bone_apps.core.data.pairs import ScanPair, pairs_from_paths, pairs_from_root
from bone_apps.core.errors import Cancelled, OutputExistsError
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.io import outputs
from bone_apps.core.jobs.run import relay

PRED = "pred"
# What a run does with its fit: fit anew, start again over an unfinished run that never saved
# a checkpoint, resume from the checkpoint, or keep the finished fit.
FIT, REFIT, RESUME, KEPT = "fit", "refit", "resume", "kept"


# ----------------------------------------------------------------------------------------------
# Progress records


@dataclass(frozen=True)
class RunStarted:
    """Run `index` (0-based) of `total` begins; `action` is fit, refit, resume or kept."""

    index: int
    total: int
    label: str
    out: Path
    action: str


@dataclass(frozen=True)
class RunProgress:
    """A record of the run's fit (core.fit) or prediction (core.predict)."""

    index: int
    total: int
    label: str
    event: object


@dataclass(frozen=True)
class ScanScored:
    """One held-out scan of the run scored; `row` as in RunOutcome.rows."""

    index: int
    total: int
    label: str
    row: dict


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: "completed" (fitted, predicted, scored) or "stopped".

    `rows` hold one dict per held-out scan: scan, miou, mdice, iou and dice (class name ->
    value, None for a class in neither volume) and prediction (the label stack's path
    relative to the experiment folder). `fit` is the run's summary.json, `config` the
    options it was fitted with (config.json, after Easy mode's adaptations).
    """

    status: str
    rows: list[dict] = field(default_factory=list)
    fit: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunPlan:
    """One run: its folder name under the experiment folder, a label for people, the fit's
    options (out, pairs and seed filled in) and the scans it is scored on."""

    key: str
    label: str
    config: FitConfig
    tests: tuple[ScanPair, ...]


# ----------------------------------------------------------------------------------------------
# Data and the experiment folder


def experiment_pairs(config: FitConfig) -> list[ScanPair]:
    """Every scan/mask pair the options name (--data ROOT, then --pair), by ID.

    Raises:
        DataCheckError: the dataset folder is missing, or scans and masks do not match.
        FitConfigError: two scans share an ID, or no scan is named.
    """
    from bone_apps.core.errors import FitConfigError

    pairs = []
    if config.data:
        pairs += pairs_from_root(Path(config.data))
    pairs += pairs_from_paths(config.pairs)
    if not pairs:
        raise FitConfigError("no scans were given: give {data} ROOT or {pairs} SCAN MASK.", "data")
    seen: dict[str, ScanPair] = {}
    for pair in pairs:
        if pair.id in seen:
            raise FitConfigError(f"{seen[pair.id].scan} and {pair.scan} share the ID {pair.id}: "
                                 "give each scan a unique folder or file name.")
        seen[pair.id] = pair
    return pairs


def run_config(template: FitConfig, out: Path, pool: Sequence[ScanPair], **changes) -> FitConfig:
    """`template` fitting exactly the `pool` scans (in that order) into `out`; the pool's
    --val-scans stay validation scans."""
    ids = {p.id for p in pool}
    return template.replace(
        out=str(out), data=None, pairs=tuple((str(p.scan), str(p.mask)) for p in pool),
        val_scans=tuple(v for v in template.val_scans if v in ids), **changes)


def claim_experiment(out: Path, kind: str, entries: Sequence[str]) -> outputs.OutputLock:
    """Lock the experiment folder `out` for this process and make it ours: new, empty, or an
    experiment of the same `kind` that bone_apps wrote. Returns the held lock.

    Raises:
        OutputExistsError: `out` is a file, another kind of bone_apps output, or (through
            ForeignFilesError) a folder holding files bone_apps did not write.
        OutputLockedError: another run is writing there.
    """
    out = Path(out).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: choose a folder for --out.")
    marker = outputs.read_marker(out)
    if marker is not None and marker.get("kind") != kind:
        raise OutputExistsError(f"{out} holds a {marker.get('kind', 'bone_apps output')} that bone_apps "
                                f"wrote, not a {kind}: choose another --out.")
    outputs.make_dirs(out.parent)
    lock = outputs.OutputLock(out).acquire()
    try:
        outputs.claim_folder(out, kind, entries)
    except BaseException:
        lock.release()
        raise
    return lock


def started_runs(out: Path, keys: Sequence[str]) -> list[str]:
    """Keys of the runs under `out` that saved a checkpoint (their fitting has begun)."""
    return [k for k in keys if (Path(out) / k / runfiles.CHECKPOINT).exists()]


def check_same_plan(path: Path, plan: dict, compared: Sequence[str], template: FitConfig,
                    out: Path, keys: Sequence[str]) -> str | None:
    """What differs between the experiment planned now and the one saved in `path` (its
    `compared` entries first, then the fit options), or None when they agree, nothing was saved,
    or no fit under `out` has started yet (such a folder takes the new plan)."""
    from bone_apps.core.errors import BoneAppsError

    if not path.exists() or not started_runs(out, keys):
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    differs = [what for what in compared if saved.get(what) != plan[what]]
    if differs:
        return differs[0]
    try:
        options = template.differences(FitConfig.from_dict(saved["fit_config"]))
    except (KeyError, TypeError, BoneAppsError):
        options = ["?"]
    return f"fit options ({', '.join(options[:4])})" if options else None


def write_json(path: Path, data: dict) -> Path:
    """An experiment's JSON file (ours: replaced freely), NaN written as null."""
    return outputs.write_json_file(path, runfiles.finite(data), overwrite=True)


# ----------------------------------------------------------------------------------------------
# One run


def fit_action(out: Path) -> str:
    """What the run in `out` needs: KEPT (finished), RESUME (a checkpoint), REFIT (a folder
    left by a run that stopped before its first checkpoint) or FIT (nothing yet)."""
    out = Path(out)
    summary = _read_json(out / runfiles.SUMMARY)
    if summary.get("status") == "completed" and (out / runfiles.MODEL).is_file():
        return KEPT
    if (out / runfiles.CHECKPOINT).exists():
        return RESUME
    return REFIT if os.path.lexists(out) else FIT


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def prediction_target(folder: Path, scan: ScanPair) -> Path:
    """Where a held-out scan's labels go when it is predicted alone: folder/<id> with the scan's
    own suffix (a folder for a folder of slices, <id>.tif for a multi-page TIFF), the form
    prediction writes for that scan."""
    name = Path(scan.scan).name
    return folder / (scan.id + (name[len(scan.id):] if name.startswith(scan.id) else ""))


def predictions_in(folder: Path) -> dict[str, Path]:
    """The finished label stacks in `folder`, by scan ID. A stack of ours is complete: it was
    written under a temporary name and renamed when its last slice was in."""
    from bone_apps.core.io.volume import volume_id

    if not Path(folder).is_dir():
        return {}
    return {volume_id(p): p for p in sorted(Path(folder).iterdir())
            if not p.name.startswith(".") and not outputs.foreign_entries(p)}


def execute_run(plan: RunPlan, root: Path, index: int, total: int,
                stop: threading.Event) -> Generator[object, None, RunOutcome]:
    """Fit (or resume, or keep) the run of `plan`, predict its held-out scans and score them.

    Yields RunStarted, RunProgress (the fit's and the prediction's own records) and
    ScanScored; returns the RunOutcome ("stopped" when `stop` was set: the fit keeps its
    checkpoint, an unfinished label stack is removed).

    Raises:
        BoneAppsError: whatever the fit, the prediction or the scoring refuses.
    """
    from bone_apps.core.fit.loop import fit

    out = Path(plan.config.out)
    action = fit_action(out)
    yield RunStarted(index, total, plan.label, out, action)
    try:
        if action != KEPT:
            job = fit(plan.config, resume=action == RESUME, overwrite=action == REFIT, stop=stop)
            result = yield from _forward(job, index, total, plan.label)
            if result.status != "completed":
                return RunOutcome("stopped")
        _own_predictions(out)
        yield from _predict(plan, index, total, stop)
        summary = _read_json(out / runfiles.SUMMARY)
        predicted = predictions_in(out / PRED)
        rows = []
        for scan in plan.tests:
            if stop.is_set():
                return RunOutcome("stopped")
            row = yield from _score(plan, scan, predicted[scan.id], summary["classes"], root,
                                    index, total, stop)
            rows.append(row)
            yield ScanScored(index, total, plan.label, row)
    except Cancelled:
        if stop.is_set():
            return RunOutcome("stopped")
        raise
    return RunOutcome("completed", rows, summary, _read_json(out / runfiles.CONFIG))


def _forward(job: Generator, index: int, total: int, label: str) -> Generator[object, None, object]:
    """Drive `job`, wrapping each of its records in RunProgress; returns its value."""
    return (yield from relay(job, lambda event: RunProgress(index, total, label, event)))


def _own_predictions(out: Path) -> None:
    """List pred/ among the run folder's entries, so the folder stays wholly ours."""
    marker = outputs.read_marker(out) or {}
    if PRED not in marker.get("entries", ()):
        outputs.write_marker(out, runfiles.RUN_KIND, (*runfiles.RUN_FILES, PRED))


def _predict(plan: RunPlan, index: int, total: int,
             stop: threading.Event) -> Generator[object, None, None]:
    """Predict the held-out scans that have no label stack yet, in one prediction run (one
    model load, one statistics pass) with the settings the fit validated."""
    from bone_apps.core.data.normalize import default_cache_dir
    from bone_apps.core.predict.config import PredictConfig
    from bone_apps.core.predict.segment import predict

    config = plan.config
    folder = Path(config.out) / PRED
    done = predictions_in(folder)
    todo = [scan for scan in plan.tests if scan.id not in done]
    if not todo:
        return
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    # One scan: OUT is its label stack; several: OUT is the folder receiving OUT/<id>.
    target = prediction_target(folder, todo[0]) if len(todo) == 1 else folder
    job = predict(PredictConfig(scans=tuple(Path(s.scan) for s in todo),
                                weights=Path(config.out) / runfiles.MODEL, out=target,
                                device=config.device, stats_cache=cache,
                                stats_workers=config.stats_workers), stop)
    yield from _forward(job, index, total, plan.label)


def _score(plan: RunPlan, scan: ScanPair, target: Path, class_names: Sequence[str], root: Path,
           index: int, total: int, stop: threading.Event) -> Generator[object, None, dict]:
    """One held-out scan's scores (its labels in `target`) against its mask: a row of
    RunOutcome.rows."""
    from bone_apps.core.score.scoring import score_stacks

    job = score_stacks(scan.mask, target, class_names=class_names, device=plan.config.device, stop=stop)
    result = yield from _forward(job, index, total, plan.label)
    return {
        "scan": scan.id,
        "miou": result.mean_iou,
        "mdice": result.mean_dice,
        "iou": {c.name: c.iou for c in result.classes},
        "dice": {c.name: c.dice for c in result.classes},
        "prediction": os.path.relpath(target, root),
    }


def finite_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values (None when there are none)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(kept) / len(kept) if kept else None


__all__ = ["RunOutcome", "RunPlan", "RunProgress", "RunStarted", "ScanScored",
           "claim_experiment", "execute_run", "experiment_pairs", "fit_action", "run_config"]
