"""An exported .onnx file as the network of prediction, run by onnxruntime.

`load_onnx_model` reads the metadata `bone export` stored in the file and returns an
`OnnxNetwork`: a torch module without parameters whose forward pass hands the batch to an
onnxruntime session. Everything else of prediction (windows, normalization, blending,
labels, outputs) is the same code as for a .pth.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from bone_apps.core.errors import WeightsError
from bone_apps.core.export.onnx import FORMAT_KEY, META_KEY, ONNX_FORMAT, OUTPUT_KEY, OUTPUTS, require

# Voxels handed to onnxruntime in one run: prediction sizes its batches from PyTorch's memory,
# which does not see onnxruntime's, so larger batches are run in parts of about this size.
VOXELS_PER_RUN = 1 << 20
_FIX = "export the model again with bone export, or use its .pth weights file"


class OnnxNetwork(torch.nn.Module):
    """A network in an ONNX file: maps (B, C, [D,] H, W) float32 to logits (B, classes, ...).

    On a CUDA device it runs on onnxruntime's CUDA provider when onnxruntime-gpu is installed,
    else on the CPU (the tensors around it stay on the device). A file whose output is
    probabilities (a bioimage.io package's network) gives their logarithm, whose softmax is
    the probabilities again.
    """

    def __init__(self, path: Path, session, output: str) -> None:
        super().__init__()
        self.path = path
        self.session = session
        self.output = output
        self.input_name = session.get_inputs()[0].name
        self.requested = ["CPUExecutionProvider"]
        self.providers = tuple(session.get_providers())

    def to(self, device: str | torch.device | None = None, *args, **kwargs) -> OnnxNetwork:
        """Run on `device`'s provider from now on (dtypes and other arguments do not apply)."""
        if isinstance(device, (str, torch.device)):
            providers = _providers(torch.device(device))
            if providers != self.requested:
                self.session = _session(self.path, providers)
                self.requested = providers
                self.providers = tuple(self.session.get_providers())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, VOXELS_PER_RUN // max(1, math.prod(x.shape[2:])))
        parts = []
        for i in range(0, x.shape[0], step):
            array = x[i:i + step].detach().to("cpu", torch.float32).contiguous().numpy()
            parts.append(torch.from_numpy(self.session.run(None, {self.input_name: array})[0]))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.output == "probabilities":
            out = out.clamp_min(1e-30).log_()
        return out.to(x.device)


def _providers(device: torch.device) -> list:
    ort = require("onnxruntime")
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, providers: list):
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about placement, not results
    return ort.InferenceSession(str(path), options, providers=providers)


def load_onnx_model(path: str | os.PathLike) -> tuple[OnnxNetwork, dict]:
    """Open an .onnx file written by bone export: (network on the CPU, the weights' metadata).

    Raises:
        WeightsError: the file is missing, is not an ONNX model, was not written by bone
            export (no metadata), or its network does not match its metadata.
    """
    from bone_apps.core.model.weights import REQUIRED_META

    path = Path(path).expanduser()
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not an ONNX model: choose the .onnx file written by "
                           "bone export.")
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: choose an .onnx file written by bone export.")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes), not an ONNX model: {_FIX}.")
    try:
        session = _session(path, ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for any bad file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not an ONNX model onnxruntime can run ({reason}): {_FIX}.") from None
    props = session.get_modelmeta().custom_metadata_map
    fmt = props.get(FORMAT_KEY)
    if fmt is None:
        raise WeightsError(f"{path} is an ONNX model without bone_apps' metadata (classes, "
                           f"normalization, mode), so it cannot be used for prediction: {_FIX}.")
    if fmt != ONNX_FORMAT:
        raise WeightsError(f"{path} has format {fmt}, which this version ({ONNX_FORMAT}) cannot read: "
                           "update bone_apps.")
    try:
        meta = json.loads(props.get(META_KEY, ""))
    except ValueError:
        meta = None
    output = props.get(OUTPUT_KEY, "logits")
    if not isinstance(meta, dict) or output not in OUTPUTS:
        raise WeightsError(f"{path} has unreadable bone_apps metadata: {_FIX}.")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise WeightsError(f"{path} lacks metadata ({', '.join(missing)}): {_FIX}.")
    inputs = session.get_inputs()
    rank = 5 if meta.get("dims") == "3d" else 4
    shape = inputs[0].shape if len(inputs) == 1 else []
    channels = shape[1] if len(shape) == rank else None
    if len(inputs) != 1 or len(shape) != rank or (isinstance(channels, int)
                                                  and channels != int(meta["in_channels"])):
        raise WeightsError(f"{path} holds a network whose input ({inputs[0].name if inputs else 'none'} "
                           f"{shape}) does not match its metadata ({meta.get('dims')}, "
                           f"{meta.get('in_channels')} channel(s)): the file was changed; {_FIX}.")
    return OnnxNetwork(path, session, output), meta
