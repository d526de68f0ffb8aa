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
from pathlib import Path

from bone_apps.core.errors import OutputExistsError

MODEL, CHECKPOINT, CONFIG, SPLIT = "model.pth", "checkpoint.pth", "config.json", "split.json"
LOG_CSV, FIT_LOG, SUMMARY = "log.csv", "fit.log", "summary.json"
RUN_FILES = (MODEL, CHECKPOINT, CONFIG, SPLIT, LOG_CSV, FIT_LOG, SUMMARY)
LOGGER_NAME = "bone_apps.fit"


def holds_run(out: Path) -> list[str]:
    """Names of run files already in `out`."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


def prepare_out(out: Path, resume: bool, overwrite: bool) -> Path:
    """Create `out`, or check it may be used.

    A folder holding an earlier run is refused unless resuming (which needs its checkpoint)
    or overwriting (which deletes only the run files named in RUN_FILES).

    Raises:
        OutputExistsError: the folder holds a run and neither resume nor overwrite was asked.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: choose a folder for --out.")
    existing = holds_run(out) if out.exists() else []
    if resume:
        return out
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out} holds an earlier run ({', '.join(existing)}): continue it with --resume {out}, "
            "replace it with --overwrite, or choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    for name in existing:
        (out / name).unlink()
    return out


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


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


def close_fit_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
