"""An experiment's results read back: the cv.json of `bone cv` or the bench.json of `bone bench`,
checked so that a window can show every table of it (Table 6, the per-scan rows, the
benchmark rows, the ranking) or say in one sentence why it cannot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.evaluate import bench as bench_module
from bone_apps.core.evaluate import cv as cv_module
from bone_apps.core.evaluate.rank import rank
from bone_apps.core.evaluate.summary import scan_table, table6_rows

CV, BENCH = cv_module.KIND, bench_module.KIND
FILES = {CV: cv_module.CV_JSON, BENCH: bench_module.BENCH_JSON}
_HINT = "give the cv.json that bone cv wrote or the bench.json that bone bench wrote"


@dataclass(frozen=True)
class ExperimentResults:
    """A checked results file: `kind` is cv.KIND or bench.KIND, `path` the JSON file, `data`
    its content."""

    kind: str
    path: Path
    data: dict

    @property
    def folder(self) -> Path:
        """The experiment folder (predictions in cv.json are relative to it)."""
        return self.path.parent

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete", True))


def read_experiment(path: str | os.PathLike) -> ExperimentResults:
    """The results in `path`: a cv.json or bench.json, or the folder holding one.

    Raises:
        BoneAppsError: no such file, not JSON, or not the results of bone cv or bone bench
            (a key missing, a figure that is not a number).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in FILES.values() if (path / name).is_file()]
        if not found:
            raise BoneAppsError(f"{path} holds neither {cv_module.CV_JSON} nor "
                                f"{bench_module.BENCH_JSON}: choose the folder bone cv or bone bench "
                                "wrote, or one of those files.")
        path = found[0]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoneAppsError(f"{path} does not exist: {_HINT}.") from None
    except OSError as exc:
        raise BoneAppsError(f"{path} cannot be read ({exc.strerror}): check the path.") from None
    except (ValueError, UnicodeDecodeError):
        raise BoneAppsError(f"{path} is not valid JSON: {_HINT}.") from None
    if not isinstance(data, dict):
        raise BoneAppsError(f"{path} holds no experiment results: {_HINT}.")
    kind = data.get("kind") or (BENCH if "rows" in data else CV if "cells" in data else None)
    if kind == CV:
        _check_cv(path, data)
    elif kind == BENCH:
        _check_bench(path, data)
    else:
        raise BoneAppsError(f"{path} holds no cross-validation or benchmark results: {_HINT}.")
    return ExperimentResults(kind, path, data)


def _check_cv(path: Path, data: dict) -> None:
    """Every table of a cross-validation can be built from `data`."""
    try:
        folds, seeds, rows = data["folds"], data["seeds"], data["scans"]
        if not (isinstance(folds, list) and all(isinstance(f, list) for f in folds)
                and isinstance(seeds, list) and isinstance(rows, list)):
            raise TypeError
        table6_rows(data, seeds)
        scan_table(rows, data.get("classes") or (list(rows[0]["iou"]) if rows else []))
        for row in rows:
            for key in ("miou", "mdice"):
                if row[key] is not None:
                    float(row[key])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise BoneAppsError(f"{path} is not a cross-validation bone cv wrote (a part of its tables "
                            f"is missing or malformed): {_HINT}.") from None


def _check_bench(path: Path, data: dict) -> None:
    """Every table of a benchmark can be built from `data` (its models rank)."""
    rows = data.get("rows")
    try:
        if not isinstance(rows, list):
            raise TypeError
        bench_module.bench_table(rows)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BoneAppsError(f"{path} is not a benchmark bone bench wrote (a part of its rows is "
                            f"missing or malformed): {_HINT}.") from None
    if rows:
        try:
            rank(rows)
        except BoneAppsError as exc:
            raise BoneAppsError(f"{path}: {exc}") from None
