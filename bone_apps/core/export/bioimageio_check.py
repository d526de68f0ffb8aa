"""What a bioimage.io package holds and how it is checked: its file names, the preprocessing
its description declares (and `preprocess`, which applies it), validation with bioimageio.spec,
and running its weights on its test input (see bioimageio.py, which writes packages).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.export.onnx import EXPORTABLE, TOLERANCE, cpu_session, difference, require, run_session

EPS = 1e-6  # bioimage.io's default epsilon of zero_mean_unit_variance and scale_range
RDF_NAME = "rdf.yaml"
FILES = {"onnx": "weights.onnx", "torchscript": "weights-torchscript.pt", "test_input": "test_input.npy",
         "test_output": "test_output.npy", "sample_input": "sample_input.tif",
         "sample_output": "sample_output.tif", "cover": "cover.png", "readme": "README.md"}


# ----------------------------------------------------------------------------------------------
# Preprocessing: the model's normalization in bioimage.io's steps


def preprocessing(norm: str, axes: list[str]) -> list[dict]:
    """The rdf's preprocessing steps for a normalization, statistics over `axes` of a sample."""
    from bone_apps.core.data.normalize import P_HIGH, P_LOW, NormMethod, value_range

    method = NormMethod.parse(norm)
    low, high = value_range(method)
    if method is NormMethod.ZSCORE:
        first = {"id": "zero_mean_unit_variance", "kwargs": {"axes": axes, "eps": EPS}}
    else:
        p_low, p_high = (P_LOW, P_HIGH) if method is NormMethod.MINMAX else (0.0, 100.0)
        first = {"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": p_low,
                                                 "max_percentile": p_high, "eps": EPS}}
    return [first, {"id": "clip", "kwargs": {"min": float(low), "max": float(high)}}]


def preprocess(raw: np.ndarray, norm: str) -> np.ndarray:
    """`raw` (B, C, ...) normalized as the rdf's preprocessing says: each sample with its own
    statistics over all its axes, then clipped (float32)."""
    from bone_apps.core.data.normalize import P_HIGH, P_LOW, NormMethod, value_range

    method = NormMethod.parse(norm)
    data = raw.astype(np.float64)
    axes = tuple(range(1, data.ndim))
    if method is NormMethod.ZSCORE:
        out = (data - data.mean(axis=axes, keepdims=True)) / (data.std(axis=axes, keepdims=True) + EPS)
    else:
        qs = (P_LOW, P_HIGH) if method is NormMethod.MINMAX else (0.0, 100.0)
        low, high = np.percentile(data, qs, axis=axes, keepdims=True)
        out = (data - low) / (high - low + EPS)
    return np.clip(out, *value_range(method)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Validation and checks


@dataclass(frozen=True)
class Validation:
    """What bioimageio.spec said of a package: its status and its warnings as lines."""

    status: str  # "valid-format" (all bioimageio.spec checks), "passed" (with dynamic tests), "failed"
    spec_version: str
    format_version: str
    warnings: tuple[str, ...]
    errors: tuple[str, ...]


def issue_lines(entries) -> tuple[str, ...]:
    return tuple(f"{'.'.join(map(str, e.loc)) or 'package'}: {e.msg}" for e in entries)


def validate_package(path: str | os.PathLike) -> Validation:
    """Validate a bioimage.io package with bioimageio.spec, with its file checks on.

    Nothing is downloaded for packages bone_apps writes: every file they name is inside them.
    """
    spec = require("bioimageio.spec")
    with zipfile.ZipFile(path) as archive:
        descr = spec.load_description(archive, perform_io_checks=True)
    summary = descr.validation_summary
    return Validation(status=summary.status, spec_version=spec.__version__,
                      format_version=str(summary.format_version), warnings=issue_lines(summary.warnings),
                      errors=issue_lines(summary.errors))


def check_package(path: str | os.PathLike, norm: str) -> dict[str, float]:
    """Run every weights format of a package on its test input (preprocessed as its rdf says)
    and compare with its test output: the largest difference per format (what bioimageio.core's
    test_model does, with onnxruntime and TorchScript).

    Raises:
        BoneAppsError: a format differs by more than TOLERANCE.
    """
    import io

    with zipfile.ZipFile(path) as archive:
        test_input = np.load(io.BytesIO(archive.read(FILES["test_input"])))
        expected = np.load(io.BytesIO(archive.read(FILES["test_output"])))
        return reproduce(io.BytesIO(archive.read(FILES["torchscript"])), archive.read(FILES["onnx"]),
                          test_input, expected, norm)


def reproduce(script, onnx_data: bytes, test_input: np.ndarray, expected: np.ndarray,
               norm: str) -> dict[str, float]:
    """Largest difference from `expected` of the TorchScript and ONNX weights on `test_input`."""
    import torch

    x = preprocess(test_input, norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is what bioimage.io runs
        network = torch.jit.load(script, map_location="cpu")
    with torch.no_grad():
        results = {"TorchScript": network(torch.from_numpy(x)).numpy(),
                   "onnxruntime": run_session(cpu_session(onnx_data), x)}
    checks = {name: difference(expected, got) for name, got in results.items()}
    for name, value in checks.items():
        if not value <= TOLERANCE:
            raise BoneAppsError(f"the package's {name} weights do not reproduce its test output "
                                f"(difference {value:.2g}, more than {TOLERANCE:g}), so it was not saved: "
                                f"fit and export a model of another architecture ({EXPORTABLE}).")
    return checks


def zip_is_ours(path: Path) -> bool:
    """Whether the zip at `path` is a bioimage.io package bone_apps wrote."""
    import yaml

    from bone_apps.core.io.outputs import is_written_by_us

    try:
        with zipfile.ZipFile(path) as archive:
            rdf = yaml.safe_load(archive.read(RDF_NAME))
        return is_written_by_us(rdf["config"]["bone_apps"]["written_by"])
    except Exception:  # noqa: BLE001 - unreadable or another kind of zip: not ours
        return False
