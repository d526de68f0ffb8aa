"""The files of a fitting run in its output folder, and the rules for reusing that folder.

OUT/model.pth (best weights), checkpoint.pth (resumable state), config.json, split.json,
log.csv (one row per epoch), fit.log (readable log) and summary.json.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from bone_apps.core.errors import OutputExistsError
from bone_apps.core.io import outputs

MODEL, CHECKPOINT, CONFIG, SPLIT = "model.pth", "checkpoint.pth", "config.json", "split.json"
LOG_CSV, FIT_LOG, SUMMARY = "log.csv", "fit.log", "summary.json"
RUN_FILES = (MODEL, CHECKPOINT, CONFIG, SPLIT, LOG_CSV, FIT_LOG, SUMMARY)
LOGGER_NAME = "bone_apps.fit"


def holds_run(out: Path) -> list[str]:
    """Names of run files already in `out`."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


RUN_KIND = "fit-run"
_PREVIOUS = f".bone_apps.previous-{os.getpid()}"


class RunClaim:
    """A run's hold on its output folder, from the checks until the run ends.

    It holds the folder's lock (no other bone_apps run writes there meanwhile). A new run
    that replaces an earlier one keeps the earlier run's files aside, in a hidden
    OUT/.bone_apps.previous-PID folder, until it has saved its first checkpoint: `release()`
    then deletes them; a run that ends before (refused data, options that do not fit, an
    error, a stop during the checks) leaves the folder exactly as it found it.
    """

    def __init__(self, out: Path, resume: bool, lock: outputs.OutputLock) -> None:
        self.out = out
        self.resume = resume
        self.lock = lock
        self.previous: Path | None = None  # the earlier run's files, kept aside
        self.created: list[Path] = []  # folders this run created (removed when it leaves nothing)

    def release(self) -> None:
        """End the claim: keep the new run if it saved a checkpoint, else undo everything."""
        try:
            if not self.resume:
                if (self.out / CHECKPOINT).exists():
                    if self.previous is not None:
                        outputs.remove(self.previous)
                else:
                    _undo(self.out, self.previous)
                    self.lock.release()  # it lives in the parent, which may be removed below
                    outputs.remove_empty_dirs(self.created)
        finally:
            self.lock.release()

    def abandon(self) -> None:
        """Before the run wrote anything: put back what was moved aside, release the folder."""
        try:
            if self.previous is not None:
                _undo(self.out, self.previous, remove_new=False)
        finally:
            self.lock.release()
        outputs.remove_empty_dirs(self.created)


def _undo(out: Path, previous: Path | None, remove_new: bool = True) -> None:
    """Remove what a run that saved no checkpoint wrote, and put the earlier run back."""
    if not out.is_dir():
        return
    if remove_new and outputs.read_marker(out) is not None:
        foreign = outputs.foreign_entries(out)
        for name in os.listdir(out):
            if name not in foreign and (previous is None or name != previous.name):
                outputs.remove(out / name)
    if previous is not None and previous.is_dir():
        for name in os.listdir(previous):
            if not os.path.lexists(out / name):
                os.replace(previous / name, out / name)
        outputs.remove_empty_dirs([previous])


def _recover(out: Path) -> None:
    """Runs killed while they kept an earlier run aside: finish what they left (under the lock)."""
    for name in os.listdir(out):
        match = outputs._OURS_HIDDEN.match(name)
        if not (match and match["name"] == "bone_apps" and name.startswith(".bone_apps.previous-")):
            continue
        if outputs.pid_alive(int(match["pid"])) and int(match["pid"]) != os.getpid():
            continue
        if (out / CHECKPOINT).exists():
            outputs.remove(out / name)  # the newer run got as far as a checkpoint: it replaced it
        else:
            _undo(out, out / name)


def prepare_out(out: Path, resume: bool, overwrite: bool) -> RunClaim:
    """Claim `out` for a run: lock it, then create it or check it may be used.

    `out` must be new, empty, or a run bone_apps wrote (its marker file `.bone_apps.json`).
    A run is refused unless resuming (which needs its checkpoint) or overwriting (the earlier
    run is kept aside until the new one saved a checkpoint; see RunClaim). A folder holding
    anything bone_apps did not write is refused either way and never touched.

    Returns the claim; call its `release()` when the run ends.

    Raises:
        OutputExistsError: the folder holds a run and neither resume nor overwrite was asked,
            or (ForeignFilesError) it holds files bone_apps did not write.
        OutputLockedError: another bone_apps run is using the folder.
        OutputWriteError: the folder cannot be created or written.
    """
    out = Path(out).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: choose a folder for --out.")
    if resume:  # nothing is removed: the run's own files are continued
        lock = outputs.OutputLock(out).acquire()
        return RunClaim(out, True, lock)
    if out.is_dir() and outputs.read_marker(out) is None:
        outputs.check_replaceable(out)  # a folder that is not empty and not ours
    created = outputs.make_dirs(out.parent)
    try:
        lock = outputs.OutputLock(out).acquire()
    except BaseException:
        outputs.remove_empty_dirs(created)
        raise
    claim = RunClaim(out, False, lock)
    claim.created = created
    try:
        claim.created = outputs.make_dirs(out) + created
        if outputs.read_marker(out) is None:
            outputs.check_replaceable(out)  # again, under the lock
        else:
            _recover(out)
            outputs.check_replaceable(out)
            existing = holds_run(out)
            if existing and not overwrite:
                raise OutputExistsError(
                    f"{out} holds an earlier run ({', '.join(existing)}): continue it with "
                    f"--resume {out}, replace it with --overwrite, or choose another --out.")
            # The marker first: a run killed half-way leaves a folder that is refused, not emptied.
            names = sorted(os.listdir(out), key=lambda n: n != outputs.MARKER)
            if names:
                claim.previous = out / _PREVIOUS
                claim.previous.mkdir()
                for name in names:
                    os.replace(out / name, claim.previous / name)
        outputs.write_marker(out, RUN_KIND, RUN_FILES)
    except OSError as exc:
        claim.abandon()
        raise outputs.output_error(exc, out) from None
    except BaseException:
        claim.abandon()
        raise
    return claim


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a run file atomically (temporary name, then rename); one-sentence disk errors."""
    return outputs.write_atomic(path, text)


def write_json(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(finite(data), indent=2) + "\n")


def finite(value):
    """NaN and infinities become null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_log_csv(path: Path, rows: list[dict]) -> Path:
    """The whole epoch table (rewritten each epoch, so a resumed run stays consistent)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return write_text_atomic(path, buffer.getvalue())


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def open_fit_log(path: Path | None) -> logging.Logger:
    """The run's logger; with a path, its lines also go to that file (appending)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    close_fit_log(logger)
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


# Libraries whose warnings speak to their own developers (deprecations, tracer chatter,
# malformed-tag notes), not to the person fitting or predicting.
QUIET_LIBRARIES = ("torch", "torchvision", "torchmetrics", "monai", "tifffile", "timm",
                   "segmentation_models_pytorch", "fvcore", "iopath", "huggingface_hub",
                   "safetensors", "lightning_utilities", "zarr", "numcodecs", "nibabel", "h5py",
                   "psutil", "tqdm")
_QUIET_MODULES = re.compile(r"(?:" + "|".join(map(re.escape, QUIET_LIBRARIES)) + r")(?:\.|$)")


def quiet_library_warnings() -> None:
    """Keep warnings issued by QUIET_LIBRARIES out of the terminal and the windows, at the
    start of `bone` and of each app. Warnings issued by bone_apps itself (and those a library
    raises from C++ about a bone_apps call, which bone_apps should fix) still show; library
    errors are untouched. tifffile's log notes about odd tags are kept at errors only.
    Calling it again changes nothing."""
    if getattr(warnings.showwarning, "_bone_apps_quiet", False):
        return
    for category in (UserWarning, FutureWarning, DeprecationWarning, PendingDeprecationWarning,
                     RuntimeWarning, ResourceWarning, ImportWarning):
        warnings.filterwarnings("ignore", category=category, module=_QUIET_MODULES.pattern)
    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # A warning attributed to the caller (stacklevel=2) is still the library's when the
        # code that issued it is the library's.
        if not _issued_by_library():
            shown(message, category, filename, lineno, file, line)

    showwarning._bone_apps_quiet = True
    warnings.showwarning = showwarning
    logging.getLogger("tifffile").setLevel(logging.ERROR)


def _issued_by_library() -> bool:
    frame = sys._getframe(2)  # past showwarning and this function
    while frame is not None and frame.f_globals.get("__name__") == "warnings":
        frame = frame.f_back
    return frame is not None and bool(_QUIET_MODULES.match(frame.f_globals.get("__name__", "")))


def close_fit_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
