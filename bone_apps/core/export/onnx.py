"""A weights file as ONNX: the network with dynamic batch and spatial size, the weights' metadata
inside, checked against PyTorch before it is saved.

The file carries what the .pth carries, in ONNX's own metadata (`metadata_props`): the model's
metadata as JSON under META_KEY, the file format under FORMAT_KEY, what the output holds
(logits, or probabilities for bioimage.io packages) under OUTPUT_KEY and who wrote it under
"written_by". So `bone predict --weights MODEL.onnx` predicts exactly as with the .pth, with
the network run by onnxruntime (core/export/runtime.py).

Opset OPSET runs on onnxruntime's CPU and CUDA providers; convolutions that pad with
replicated edges (models.set_border_padding) become an ONNX Pad in "edge" mode before the
convolution, so the exported network pads as the fitted one did.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.errors import BoneAppsError

if TYPE_CHECKING:
    import torch

ONNX_FORMAT = "bone_apps.onnx/1"
OPSET = 17
FORMAT_KEY = "bone_apps.format"
META_KEY = "bone_apps.meta"
OUTPUT_KEY = "bone_apps.output"
WRITTEN_BY_KEY = "written_by"
INPUT_NAME = "input"
OUTPUTS = ("logits", "probabilities")
# onnxruntime and PyTorch must agree this closely (relative to the largest value when that
# exceeds 1): float32 convolutions summed in another order differ by about 1e-5.
TOLERANCE = 1e-4
_INSTALL = "pip install 'bone-apps[export]'"
# What a refusal suggests: architectures measured to export (PSPNet and UPerNet pool to fixed
# grids and DPT takes one input size, which ONNX with free sizes cannot express).
EXPORTABLE = ("e.g. Unet, UnetPlusPlus, FPN, Linknet, MAnet, DeepLabV3, DeepLabV3Plus, PAN, Segformer "
              "or the 3D BasicUNet")


def require(name: str) -> ModuleType:
    """Import an optional library of export (onnx, onnxruntime, bioimageio.spec), or say how
    to install it."""
    try:
        return import_module(name)
    except ImportError:
        raise BoneAppsError(f"{name} is not installed, and exporting or running ONNX models needs "
                            f"it: install it with {_INSTALL}.") from None


def spatial_axes(dims: str) -> tuple[str, ...]:
    """Names of the spatial axes of a network input: (y, x), or (z, y, x) for 3D."""
    return ("z", "y", "x") if dims == "3d" else ("y", "x")


def difference(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest expected value when that exceeds 1."""
    if expected.shape != got.shape:
        return float("inf")
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(expected.astype(np.float64) - got).max(initial=0.0)) / scale


def onnx_bytes(network: torch.nn.Module, example: torch.Tensor, dims: str, output: str,
               what: str = "this model") -> bytes:
    """The network as an ONNX model (opset OPSET), dynamic in batch and spatial size.

    Raises:
        BoneAppsError: the network cannot be expressed in ONNX (one sentence naming `what`).
    """
    import torch

    require("onnx")
    names = {0: "batch"} | {2 + i: axis for i, axis in enumerate(spatial_axes(dims))}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter: the newer one needs onnxscript, and both give the
            # same graph for these networks. Its tracer warnings concern shapes that are fixed
            # here (inputs are multiples of the network's size).
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), buffer, input_names=[INPUT_NAME], output_names=[output],
                              dynamic_axes={INPUT_NAME: names, output: names}, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "cannot be exported"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BoneAppsError(f"{what} cannot be exported to ONNX ({first[:160]}): fit and export a model "
                            f"of another architecture ({EXPORTABLE}).") from None
    return buffer.getvalue()


def with_metadata(data: bytes, meta: dict, output: str) -> bytes:
    """The ONNX model `data` with bone_apps' metadata (the weights' meta) inside."""
    from bone_apps.core.io.outputs import WRITTEN_BY

    onnx = require("onnx")
    model = onnx.load_from_string(data)
    model.producer_name = "bone_apps"
    model.doc_string = (f"{meta.get('arch')} ({meta.get('encoder')}, {meta.get('dims')}) segmenting "
                        f"{', '.join(map(str, meta.get('class_names', [])))}; exported by {WRITTEN_BY}")
    values = {FORMAT_KEY: ONNX_FORMAT, META_KEY: json.dumps(meta), OUTPUT_KEY: output,
              WRITTEN_BY_KEY: WRITTEN_BY}
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def cpu_session(data: bytes | str | os.PathLike):
    """An onnxruntime session of an ONNX model on the CPU."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about placement, not results
    source = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_session(session, array: np.ndarray) -> np.ndarray:
    """The first output of an onnxruntime session for `array`."""
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def other_size(example: torch.Tensor, multiple: int) -> torch.Tensor:
    """A second input unlike `example` in batch and every spatial size (one multiple more), to
    check that the exported sizes are truly dynamic."""
    import torch

    generator = torch.Generator().manual_seed(0)
    shape = (2, example.shape[1], *(s + multiple for s in example.shape[2:]))
    return torch.randn(shape, generator=generator)


def check_agreement(network: torch.nn.Module, data: bytes, inputs: list[torch.Tensor], what: str) -> float:
    """Largest difference (see `difference`) between PyTorch and onnxruntime over `inputs`.

    Raises:
        BoneAppsError: they differ by more than TOLERANCE.
    """
    import torch

    session = cpu_session(data)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = network(x).numpy()
        worst = max(worst, difference(expected, run_session(session, x.numpy())))
    if not worst <= TOLERANCE:
        raise BoneAppsError(f"{what} gives other results in onnxruntime than in PyTorch (difference "
                            f"{worst:.2g}, more than {TOLERANCE:g}), so it was not saved: fit and export "
                            f"a model of another architecture ({EXPORTABLE}).")
    return worst


def normalized_example(block: np.ndarray, norm: str) -> torch.Tensor:
    """The raw test block normalized with its own statistics, as a tensor."""
    import torch

    from bone_apps.core.data.normalize import normalize
    from bone_apps.core.export.sample import block_stats

    return torch.from_numpy(normalize(block, block_stats(block), norm))


@dataclass(frozen=True)
class OnnxExport:
    """What export_onnx wrote and measured."""

    path: Path
    opset: int
    input_shape: tuple[int, ...]  # the test input (batch, channels, [depth,] height, width)
    difference: float  # largest difference from PyTorch over the test input and another size
    bytes: int

    def text(self) -> str:
        axes = ", ".join(("batch", "channels", *spatial_axes("3d" if len(self.input_shape) == 5 else "2d")))
        return (f"{self.path}: ONNX opset {self.opset}, input ({axes}) of any batch and size (a multiple "
                f"of the network's), {self.bytes / 1e6:.1f} MB; onnxruntime agrees with PyTorch within "
                f"{self.difference:.1e} on the test input {'x'.join(map(str, self.input_shape))} and on "
                "another size")


def onnx_is_ours(path: Path) -> bool:
    """Whether the .onnx at `path` was written by bone_apps (its "written_by" metadata)."""
    from bone_apps.core.io.outputs import is_written_by_us

    try:
        model = require("onnx").load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    return any(p.key == WRITTEN_BY_KEY and is_written_by_us(p.value) for p in model.metadata_props)


def export_onnx(weights: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
                sample: str | os.PathLike | None = None) -> OnnxExport:
    """Write the network of a weights file as ONNX, with its metadata, after checking that
    onnxruntime reproduces PyTorch on a test input from `sample` (default: a generated scan)
    and on another batch and size.

    Args:
        weights: a .pth weights file written by bone fit.
        out: the .onnx file to write (atomically).
        overwrite: replace `out` if bone_apps wrote it.
        sample: a scan to cut the test input from.

    Raises:
        WeightsError: `weights` is not a usable weights file.
        OutputExistsError: `out` exists (and may not be replaced).
        BoneAppsError: the network cannot be exported faithfully, or a library is missing.
    """
    from bone_apps.core.export.sample import sample_block
    from bone_apps.core.io.outputs import check_target, write_atomic

    out = Path(out).expanduser()
    check_exportable_target(out, ".onnx", overwrite, onnx_is_ours)
    model, meta, spec = load_fitted_model(weights)
    what = f"{weights} ({meta.get('arch')} with {meta.get('encoder')}, {spec.dims})"
    example = normalized_example(sample_block(spec, meta, sample), spec.norm)
    data = with_metadata(onnx_bytes(model, example, spec.dims, "logits", what), meta, "logits")
    worst = check_agreement(model, data, [example, other_size(example, spec.required_multiple)], what)
    check_target(out, overwrite, onnx_is_ours)
    write_atomic(out, data)
    return OnnxExport(out, OPSET, tuple(example.shape), worst, len(data))


def load_fitted_model(weights: str | os.PathLike):
    """(PyTorch network, meta, ModelSpec) of a .pth weights file (predict.load_model).

    Raises:
        WeightsError: not a usable weights file, or an .onnx (export starts from the .pth).
    """
    from bone_apps.core.errors import WeightsError
    from bone_apps.core.predict.segment import load_model

    weights = Path(weights).expanduser()
    if weights.suffix.lower() == ".onnx":
        raise WeightsError(f"{weights} is already exported: export from the .pth weights file written "
                           "by bone fit.")
    return load_model(weights)


def check_exportable_target(out: Path, suffix: str, overwrite: bool, ours) -> None:
    """`out` must end in `suffix`, lie in an existing folder, and be new or (overwrite) ours.

    Raises:
        BoneAppsError / OutputExistsError: it does not or is not.
    """
    from bone_apps.core.io.outputs import check_target

    if out.suffix.lower() != suffix:
        raise BoneAppsError(f"{out} does not end in {suffix}: give the output a name ending in {suffix}.")
    if out.is_dir():
        raise BoneAppsError(f"{out} is a folder: give a file name ending in {suffix}.")
    if not out.parent.is_dir():
        raise BoneAppsError(f"the folder of {out} does not exist: create it or choose another output.")
    check_target(out, overwrite, ours)
