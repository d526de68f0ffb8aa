"""Scan-level K-fold cross-validation over several seeds (the paper's §2.5.1 and Table 6).

`cross_validate(config)` is a generator like core.fit's: it puts the scans in a fixed order,
cuts K test folds of whole scans (folds.py), writes DIR/folds.json, and then for every fold x
seed runs an ordinary fit on the fold's pool into DIR/fold{f}_seed{s}/, predicts the fold's
test scans into DIR/fold{f}_seed{s}/pred/<scan> and scores them (runs.py). After each run
DIR/cv.json, cv.csv, cv.md (Table 6) and cv.png (per-scan mIoU by fold) are written again,
with "complete": false until the last run is in. Run it again after a stop or a crash and it
continues: finished fits are kept, an unfinished fit resumes from its checkpoint.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bone_apps.core.errors import FitConfigError
from bone_apps.core.evaluate import runs as experiment
from bone_apps.core.evaluate import summary as table6
from bone_apps.core.evaluate.folds import Folds, make_folds, pool_split
from bone_apps.core.evaluate.plot import write_cv_plot
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.io.outputs import write_atomic

KIND = "cross-validation"
FOLDS_JSON, CV_JSON, CV_CSV, CV_MD, CV_PNG = "folds.json", "cv.json", "cv.csv", "cv.md", "cv.png"


@dataclass(frozen=True)
class CVConfig:
    """A cross-validation: `fit` holds the options of every fit (its data or pairs name the
    scans, its val_scans validate in every pool that holds them, its out is ignored); `out`
    the experiment folder; `folds` K; `seeds` the fit seed of each replicate; the scan
    order comes from `order_file` (scan IDs, as the paper's Table 3) or is shuffled with
    `order_seed` (folds.DEFAULT_ORDER_SEED when neither is given)."""

    fit: FitConfig
    out: str
    folds: int = 5
    seeds: tuple[int, ...] = (42,)
    order_seed: int | None = None
    order_file: str | None = None


@dataclass(frozen=True)
class CVMessage:
    """A line for the user."""

    text: str


@dataclass(frozen=True)
class CVUpdated:
    """cv.json's content so far (Table 6 with the cells scored up to now): yielded with the
    plan (no scores) and after each fold x seed."""

    data: dict


@dataclass(frozen=True)
class CVFinished:
    """The last record: the result."""

    result: CVResult


@dataclass(frozen=True)
class CVResult:
    """How the cross-validation ended ("completed" or "stopped") and what it wrote; `data`
    is cv.json's content."""

    out: Path
    status: str
    data: dict
    files: dict[str, Path | None] = field(default_factory=dict)


def run_key(fold: int, seed: int) -> str:
    """The folder of a fold x seed under the experiment folder."""
    return f"fold{fold}_seed{seed}"


def _check(config: CVConfig) -> None:
    if not config.seeds:
        raise FitConfigError("no seeds were given: give at least one with --seeds.")
    if len(set(config.seeds)) != len(config.seeds):
        raise FitConfigError(f"--seeds {' '.join(map(str, config.seeds))} repeats a seed: give each "
                             "seed once.")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise FitConfigError("cross-validation runs its fits one after another in one process: start "
                             "it without torchrun (each fit uses every GPU given by {device}).", "device")


def plan_folds(config: CVConfig) -> tuple[Folds, list]:
    """The folds and the pairs of the data, with every refusal made before anything is written."""
    _check(config)
    config.fit.validate()
    pairs = experiment.experiment_pairs(config.fit)
    folds = make_folds([p.id for p in pairs], config.folds, config.order_seed, config.order_file,
                       config.fit.val_scans)
    return folds, pairs


def cross_validate(config: CVConfig, stop: threading.Event | None = None
                   ) -> Generator[object, None, CVResult]:
    """Run the cross-validation `config` describes, yielding progress; the last record is
    CVFinished.

    Records: CVMessage, CVUpdated (cv.json's content, at the start and after each fold x
    seed), and from runs.py RunStarted, RunProgress (each fit's and prediction's own
    records), ScanScored.

    Raises:
        FitConfigError: refused folds (more folds than scans, a pool without a validation
            scan, ...), or a folder holding a cross-validation with other folds, seeds or
            fit options.
        BoneAppsError: whatever a fit, a prediction or the scoring refuses.
    """
    stop = stop or threading.Event()
    folds, pairs = plan_folds(config)
    by_id = {p.id: p for p in pairs}
    out = Path(config.out).expanduser()
    seeds = tuple(int(s) for s in config.seeds)
    keys = [run_key(f, s) for f in range(1, folds.k + 1) for s in seeds]
    template = config.fit.replace(out=str(out))
    lock = experiment.claim_experiment(out, KIND, [FOLDS_JSON, CV_JSON, CV_CSV, CV_MD, CV_PNG, *keys])
    try:
        plan = _folds_document(folds, seeds, template, by_id)
        _write_or_check_folds(out, plan, template, keys)
        yield CVUpdated(cv_data(folds, seeds, plan, [], [], complete=False))
        yield CVMessage(f"{folds.k} folds of {', '.join(str(len(t)) for t in folds.tests)} test scans, "
                        f"{len(seeds)} seed(s): {len(keys)} fits into {out} (folds in "
                        f"{out / FOLDS_JSON})")
        plans = []
        for f in range(1, folds.k + 1):
            pool = [by_id[i] for i in folds.pool(f)]
            tests = tuple(by_id[i] for i in folds.tests[f - 1])
            for s in seeds:
                key = run_key(f, s)
                fit = experiment.run_config(template, out / key, pool, seed=s)
                plans.append((f, s, experiment.RunPlan(key, f"fold {f}, seed {s}", fit, tests)))
        rows: list[dict] = []
        fits: list[dict] = []
        status = "completed"
        data: dict = {}
        files: dict = {}
        for index, (f, s, run) in enumerate(plans):
            outcome = yield from experiment.execute_run(run, out, index, len(plans), stop)
            if outcome.status != "completed":
                status = "stopped"
                break
            rows += [{"fold": f, "seed": s, **r} for r in outcome.rows]
            fits.append(_fit_row(f, s, run.key, outcome))
            data, files = _write_results(out, folds, seeds, plan, rows, fits,
                                         complete=index + 1 == len(plans))
            yield CVUpdated(data)
        if not data:
            data, files = _write_results(out, folds, seeds, plan, rows, fits, complete=False)
    finally:
        lock.release()
    result = CVResult(out, status, data, files)
    yield CVFinished(result)
    return result


def _folds_document(folds: Folds, seeds: Sequence[int], template: FitConfig, by_id: dict) -> dict:
    splits = []
    for f in range(1, folds.k + 1):
        for s in seeds:
            split = pool_split(folds, f, s, template.train_fraction, template.val_scans)
            splits.append({"fold": f, "seed": s, "run": run_key(f, s), "test": list(folds.tests[f - 1]),
                           "train": list(split.train), "val": list(split.val)})
    return {"kind": KIND, **folds.to_dict(), "seeds": list(seeds), "splits": splits,
            "scans": {i: {"scan": str(p.scan), "mask": str(p.mask)} for i, p in by_id.items()},
            "fit_config": template.to_dict()}


def _write_or_check_folds(out: Path, plan: dict, template: FitConfig, keys: Sequence[str]) -> None:
    """Write folds.json, or check that the one there describes this cross-validation. A folder
    where no fit has started yet takes the new plan."""
    path = out / FOLDS_JSON
    differs = experiment.check_same_plan(path, plan, ("folds", "seeds"), template, out, keys)
    if differs:
        raise FitConfigError(f"{out} holds a cross-validation with other {differs}: give the "
                             f"options it was started with (see {path}), or another --out.")
    experiment.write_json(path, plan)


def _fit_row(fold: int, seed: int, key: str, outcome: experiment.RunOutcome) -> dict:
    summary = outcome.fit
    return {"fold": fold, "seed": seed, "run": key, "best_epoch": summary.get("best_epoch"),
            "best_val_iou": summary.get("best_val_iou"), "epochs": summary.get("epochs_done"),
            "train": summary.get("split", {}).get("train"), "val": summary.get("split", {}).get("val")}


def cv_data(folds: Folds, seeds: Sequence[int], plan: dict, rows: Sequence[dict],
            fits: Sequence[dict], complete: bool) -> dict:
    """cv.json's content from the rows scored so far (Table 6 by summary.summarize)."""
    stats = table6.summarize(rows, folds.k, seeds)
    classes = list(rows[0]["iou"]) if rows else []
    return {"kind": KIND, "complete": complete, "folds": [list(t) for t in folds.tests],
            "seeds": list(seeds), "order": list(folds.order), "order_seed": folds.order_seed,
            "order_file": folds.order_file, "classes": classes, "scans": list(rows), **stats,
            "fits": list(fits), "rules": table6.RULES, "fit_config": plan["fit_config"]}


def _write_results(out: Path, folds: Folds, seeds: Sequence[int], plan: dict, rows: list[dict],
                   fits: list[dict], complete: bool) -> tuple[dict, dict]:
    """cv.json, cv.csv, cv.md and cv.png from the rows scored so far."""
    data = cv_data(folds, seeds, plan, rows, fits, complete)
    classes = data["classes"]
    files: dict[str, Path | None] = {"json": experiment.write_json(out / CV_JSON, data)}
    files["csv"] = write_atomic(out / CV_CSV, table6.scans_csv(rows, classes))
    files["markdown"] = write_atomic(out / CV_MD, table6.table6_markdown(
        data, seeds, [len(t) for t in folds.tests]))
    files["plot"] = write_cv_plot(out / CV_PNG, rows, folds.tests, seeds) if rows else None
    return data, files
