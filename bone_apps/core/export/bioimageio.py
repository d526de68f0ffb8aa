"""A weights file as a bioimage.io model package (a zip that the model zoo, deepImageJ, ilastik
and bioimageio.core can run), validated offline before it is saved.

The package holds its description (rdf.yaml, bioimage.io model format 0.5), the network as
TorchScript and as ONNX (both end in a softmax: they give class probabilities), a test input
cut from a scan and the output the network gives for it, the same pair as TIFF sample tensors,
a cover image and a README. The input's preprocessing is the model's normalization written
in bioimage.io's steps: statistics over each input sample (bone_apps uses the whole scan's),
then the clip to the normalization's range. `preprocess` applies exactly those steps, and the
test output is computed from it, so a bioimage.io runner reproduces the test output.

Validation uses bioimageio.spec with its file checks on (every file of the zip is read, hashed
and checked against the description, the test and sample tensors against the axes); the
description names no web address and no GitHub account, so nothing is looked up online.
bioimageio.spec checks the format only; running the weights on the test input (what
bioimageio.core's test_model does) is done here with onnxruntime and TorchScript before the
package is zipped, and `check_package` does it for any package (both in bioimageio_check.py).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.export.bioimageio_check import (
    FILES,
    Validation,
    issue_lines,
    preprocess,
    preprocessing,
    reproduce,
    validate_package,
    zip_is_ours,
)
from bone_apps.core.export.onnx import (
    EXPORTABLE,
    OPSET,
    TOLERANCE,
    check_agreement,
    check_exportable_target,
    load_fitted_model,
    onnx_bytes,
    other_size,
    require,
    spatial_axes,
    with_metadata,
)

if TYPE_CHECKING:
    import torch

    from bone_apps.core.model.spec import ModelSpec

LICENSE = "CC-BY-4.0"
PAPER = {
    "text": "Lee AH, Talluri G, Damani M, Covarrubias BV, Hanna H, Chavez J, Moore JM, Baradarian J, "
            "Molgaard M, Nielson B, Walden K, Broderick TL and Al-Nakkash L (2026). Deep learning "
            "software and revised 2D model to segment bone in micro-CT scans. Front. Bioinform. "
            "5:1677527.",
    "doi": "10.3389/fbinf.2025.1677527",
}
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
_NAME_CHARACTERS = r"A-Za-z0-9_+\- ()"
_COVER_HEIGHT = 256
_COLOURS = np.array([(0, 0, 0), (240, 200, 60), (220, 60, 60), (60, 130, 230), (70, 200, 120),
                     (200, 90, 220), (240, 140, 40), (60, 210, 210)], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# The package's parts


def _probabilities_network(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    class Probabilities(torch.nn.Module):
        """The segmentation network followed by a softmax over the classes."""

        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(x), dim=1)

    return Probabilities(model).eval()


def _torchscript(network: torch.nn.Module, example: torch.Tensor, path: Path, what: str) -> None:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings: shapes here are multiples of the network's
            torch.jit.trace(network, example, check_trace=False).save(str(path))
    except Exception as exc:  # noqa: BLE001 - any tracer failure means "cannot be exported"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BoneAppsError(f"{what} cannot be saved as TorchScript ({first}): fit and export a model "
                            f"of another architecture ({EXPORTABLE}).") from None


def _axes(spec: ModelSpec) -> tuple[list[dict], list[dict]]:
    """Input and output axes of the rdf: batch, channel, then the spatial axes."""
    if spec.dims == "2.5d":
        channels = [f"slice z{d:+d}" for d in range(-spec.context, spec.context + 1)]
    else:
        channels = ["intensity"]
    space = spatial_axes(spec.dims)
    size = {"min": spec.required_multiple, "step": spec.required_multiple}
    inputs = [{"type": "batch"}, {"type": "channel", "channel_names": channels}]
    inputs += [{"type": "space", "id": axis, "size": size} for axis in space]
    outputs = [{"type": "batch"}, {"type": "channel", "channel_names": list(spec.class_names)}]
    outputs += [{"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis}}
                for axis in space]
    return inputs, outputs


def _middle_plane(array: np.ndarray, dims: str) -> np.ndarray:
    """(channels, H, W) of the middle slice of a (1, C, [D,] H, W) tensor."""
    if dims == "3d":
        return array[0, :, array.shape[2] // 2]
    return array[0]


def write_cover(normalized: np.ndarray, probabilities: np.ndarray, dims: str, path: Path) -> None:
    """A 2:1 PNG: the middle slice of the test input beside it with the predicted classes."""
    from PIL import Image

    channels = _middle_plane(normalized, dims)
    image = channels[channels.shape[0] // 2].astype(np.float64)
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-12) * 255.0
    labels = _middle_plane(probabilities, dims).argmax(axis=0)
    colours = _COLOURS[labels % len(_COLOURS)]
    grey = np.repeat(image[..., None], 3, axis=2)
    overlay = np.where(labels[..., None] > 0, 0.45 * grey + 0.55 * colours, grey)
    both = np.concatenate([grey, overlay], axis=1).clip(0, 255).astype(np.uint8)
    scale = max(1, math.ceil(_COVER_HEIGHT / both.shape[0]))
    both = both.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(both).save(path)


def _readme(name: str, meta: dict, spec: ModelSpec, norm_steps: list[dict], checks: dict[str, float]) -> str:
    from bone_apps.core.io.outputs import WRITTEN_BY
    from bone_apps.core.model.weights import summarize_meta

    space = ", ".join(spatial_axes(spec.dims))
    mode = {"2d": "one slice at a time", "3d": "in 3D blocks",
            "2.5d": f"one slice at a time with {spec.context} neighbouring slice(s) on each side as channels"}
    metrics = meta.get("metrics") or {}
    lines = [f"# {name}", "",
             f"Segmentation of micro-CT scans into {', '.join(spec.class_names)}, {mode[spec.dims]}. "
             f"Written by {WRITTEN_BY} (`bone export`) from a model fitted with `bone fit`.", "",
             "```", summarize_meta(meta), "```", "",
             "## Input", "",
             f"`{INPUT_ID}`: (batch, channel, {space}) float32 intensities as in the scan; every spatial "
             f"size a multiple of {spec.required_multiple}. Preprocessing: "
             + " then ".join(f"`{step['id']}` {step['kwargs']}" for step in norm_steps) + ".", "",
             "bone_apps normalizes with the statistics of the whole scan; a runner that sees one block "
             "normalizes with the block's, so give it the whole scan (or a large part of it) at once.", "",
             "## Output", "",
             f"`{OUTPUT_ID}`: (batch, channel, {space}) float32 probability of each class "
             f"({', '.join(spec.class_names)}); the label of a voxel is the most probable class "
             "(bone_apps makes it background when that probability is below 0.5).", "",
             "## Validation", ""]
    if "val_iou" in metrics:
        lines.append(f"- Mean IoU on the validation scans while fitting: {metrics['val_iou']:.4f} "
                     f"(epoch {meta.get('best_epoch')}).")
    inference = meta.get("inference") or {}
    if inference.get("val_iou") is not None:
        lines.append("- Whole-slice mean IoU with bone_apps' prediction settings: "
                     f"{inference['val_iou']:.4f}.")
    lines += [f"- Export check: on the test input, {' and '.join(checks)} reproduce the PyTorch model "
              f"within {max(checks.values()):.1e} (limit {TOLERANCE:g}).",
              "- To measure the model on your own scans, predict them with `bone predict` and compare with "
              "reference masks with `bone iou`.", "",
              "## Citation", "", PAPER["text"] + f" https://doi.org/{PAPER['doi']}", ""]
    return "\n".join(lines)


def _public_meta(meta: dict) -> dict:
    """The weights' metadata without the fit's options, which name the user's folders."""
    return {key: value for key, value in meta.items() if key != "fit_config"}


def default_name(meta: dict) -> str:
    """A package name made of the model's facts, in the characters bioimage.io allows."""
    classes = " ".join(str(n) for n in meta.get("class_names", []))
    mode = str(meta.get("dims", "")).upper().replace(".", "_")  # 2D, 2_5D, 3D: no dots allowed
    text = f"bone_apps {meta.get('arch')} {mode} {classes}"
    text = re.sub(f"[^{_NAME_CHARACTERS}]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()[:64]


def _check_name(name: str) -> str:
    name = name.strip()
    if not 5 <= len(name) <= 128 or re.search(f"[^{_NAME_CHARACTERS}]", name):
        raise BoneAppsError(f"the package name {name!r} cannot be used: give 5 to 128 letters, digits, "
                            "spaces, '_', '-', '+' or parentheses.")
    return name


def _check_license(license: str) -> None:
    from bioimageio.spec.generic.v0_3 import LicenseId

    try:
        LicenseId(license)
    except ValueError:
        raise BoneAppsError(f"{license!r} is not an SPDX license identifier that bioimage.io accepts: "
                            "give one such as CC-BY-4.0, MIT or BSD-3-Clause.") from None


# ----------------------------------------------------------------------------------------------
# The export


@dataclass(frozen=True)
class BioimageioExport:
    """What export_bioimageio wrote, measured and validated."""

    path: Path
    name: str
    validation: Validation
    checks: dict[str, float]  # largest difference from the test output per weights format
    test_shape: tuple[int, ...]
    bytes: int

    def text(self) -> str:
        validation = self.validation
        reproduced = ", ".join(f"{k} within {v:.1e}" for k, v in self.checks.items())
        lines = [f"{self.path}: bioimage.io model package \"{self.name}\" "
                 f"(format {validation.format_version}), TorchScript and ONNX weights, test input "
                 f"{'x'.join(map(str, self.test_shape))}, {self.bytes / 1e6:.1f} MB",
                 f"validation (bioimageio.spec {validation.spec_version}, offline, files checked): "
                 f"{validation.status}",
                 f"test output reproduced by {reproduced}"]
        lines += [f"note: {w}" for w in self.validation.warnings]
        return "\n".join(lines)


def export_bioimageio(
    weights: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    sample: str | os.PathLike | None = None,
    name: str | None = None,
    authors: tuple[str, ...] = (),
    license: str = LICENSE,
    description: str | None = None,
) -> BioimageioExport:
    """Write a bioimage.io model package of a weights file, after validating it offline and
    checking that its TorchScript and ONNX weights reproduce its test output.

    Args:
        weights: a .pth weights file written by bone fit.
        out: the .zip to write (atomically).
        overwrite: replace `out` if bone_apps wrote it.
        sample: a scan to cut the test input from (default: a generated sample scan).
        name: the package's name (default: from the model's architecture and classes).
        authors: the model's authors, as the package names them.
        license: an SPDX license identifier for the package.
        description: one or two sentences (default: from the model's metadata).

    Raises:
        WeightsError: `weights` is not a usable weights file.
        OutputExistsError: `out` exists (and may not be replaced).
        BoneAppsError: the network cannot be exported, the package does not validate, or a
            library is missing.
    """
    import shutil

    import torch

    from bone_apps.core.export.sample import sample_block
    from bone_apps.core.io.outputs import atomic_target, check_target, output_error

    spec_lib = require("bioimageio.spec")
    out = Path(out).expanduser()
    check_exportable_target(out, ".zip", overwrite, zip_is_ours)
    bad_author = next((a for a in authors if "/" in a or not a.strip()), None)
    if bad_author is not None:
        raise BoneAppsError(f"the author name {bad_author!r} cannot be used: give a name without '/'.")
    _check_license(license)
    if name is not None:
        _check_name(name)
    model, meta, spec = load_fitted_model(weights)
    name = _check_name(name or default_name(meta))
    what = f"{weights} ({meta.get('arch')} with {meta.get('encoder')}, {spec.dims.value})"
    raw = sample_block(spec, meta, sample)
    x = torch.from_numpy(preprocess(raw, spec.norm))
    network = _probabilities_network(model)
    with torch.no_grad():
        probabilities = network(x).numpy()
    steps = preprocessing(spec.norm, ["channel", *spatial_axes(spec.dims)])
    with tempfile.TemporaryDirectory(prefix="bone-export-") as folder:
        root = Path(folder) / "package"
        root.mkdir()
        data = with_metadata(onnx_bytes(network, x, spec.dims, OUTPUT_ID, what), _public_meta(meta),
                             "probabilities")
        # The test input, and another batch and size as bone predict and tiling runners use.
        check_agreement(network, data, [x, other_size(x, spec.required_multiple)], what)
        (root / FILES["onnx"]).write_bytes(data)
        _torchscript(network, x, root / FILES["torchscript"], what)
        np.save(root / FILES["test_input"], raw)
        np.save(root / FILES["test_output"], probabilities)
        _write_sample(root / FILES["sample_input"], raw)
        _write_sample(root / FILES["sample_output"], probabilities)
        write_cover(x.numpy(), probabilities, spec.dims, root / FILES["cover"])
        # The README states the checks, so they run first, on the files as they are packed.
        checks = reproduce(str(root / FILES["torchscript"]), data, raw, probabilities, spec.norm)
        (root / FILES["readme"]).write_text(_readme(name, meta, spec, steps, checks), encoding="utf-8")
        rdf = _rdf(spec_lib, meta, spec, name, description, authors, license, steps)
        package = Path(folder) / "package.zip"
        _save_package(spec_lib, rdf, root, package)
        validation = validate_package(package)
        if validation.status not in ("valid-format", "passed"):
            raise BoneAppsError(f"the bioimage.io package does not validate "
                                f"({'; '.join(validation.errors)[:300]}), so it was not saved: fix the "
                                "option it names (e.g. --license) and export again.")
        check_target(out, overwrite, zip_is_ours)
        try:
            with atomic_target(out) as tmp:
                shutil.copyfile(package, tmp)
        except OSError as exc:
            raise output_error(exc, out) from None
        size = package.stat().st_size
    return BioimageioExport(out, name, validation, checks, tuple(raw.shape), size)


def _rdf(spec_lib, meta: dict, spec: ModelSpec, name: str, description: str | None,
         authors: tuple[str, ...], license: str, steps: list[dict]) -> dict:
    """The package's description (rdf.yaml) as plain data; files are named by FILES."""
    import torch

    from bone_apps.core.io.outputs import WRITTEN_BY

    inputs, outputs = _axes(spec)
    description = description or (f"{meta.get('arch')} ({meta.get('encoder')}, {spec.dims.value}) segmenting "
                                  f"micro-CT scans into {', '.join(spec.class_names)}; fitted and "
                                  "exported with bone_apps.")
    return {
        "type": "model",
        "format_version": spec_lib.ModelDescr.implemented_format_version,
        "name": name,
        "description": description[:1024],
        "authors": [{"name": a.strip()} for a in authors],
        "cite": [PAPER],
        "license": license,
        "documentation": {"source": FILES["readme"]},
        "covers": [{"source": FILES["cover"]}],
        "tags": ["bone", "micro-ct", "semantic-segmentation", spec.dims.value,
                 "pytorch", "onnx", "bone_apps"],
        "inputs": [{"id": INPUT_ID, "axes": inputs, "data": {"type": "float32"},
                    "test_tensor": {"source": FILES["test_input"]},
                    "sample_tensor": {"source": FILES["sample_input"]},
                    "preprocessing": steps}],
        "outputs": [{"id": OUTPUT_ID, "axes": outputs, "data": {"type": "float32", "range": [0.0, 1.0]},
                     "test_tensor": {"source": FILES["test_output"]},
                     "sample_tensor": {"source": FILES["sample_output"]}}],
        "weights": {
            "torchscript": {"source": FILES["torchscript"],
                            "pytorch_version": torch.__version__.split("+")[0]},
            "onnx": {"source": FILES["onnx"], "opset_version": OPSET, "parent": "torchscript"},
        },
        "config": {"bone_apps": {"written_by": WRITTEN_BY, "meta": _public_meta(meta)}},
    }


def _write_sample(path: Path, array: np.ndarray) -> None:
    """A sample tensor as TIFF (what imageio reads): the tensor without its batch axis."""
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(array[0].squeeze()))


def _save_package(spec_lib, rdf: dict, root: Path, package: Path) -> None:
    """Build the description from `rdf` (files in `root`) and zip it as a package.

    Raises:
        BoneAppsError: the description is invalid (e.g. an unknown license).
    """
    context = spec_lib.ValidationContext(root=root, perform_io_checks=True)
    descr = spec_lib.build_description(rdf, context=context)
    if isinstance(descr, spec_lib.InvalidDescr):
        errors = "; ".join(issue_lines(descr.validation_summary.errors))[:300]
        raise BoneAppsError(f"the bioimage.io description is invalid ({errors}), so nothing was saved: fix "
                            "the option it names (e.g. --license, --name) and export again.")
    spec_lib.save_bioimageio_package(descr, output_path=package)
