"""The plan of one fitting run: where it runs and what setup decided, frozen before the first batch.

Setup (core.fit.prepare) checks the data, splits it, adapts the options (Easy mode, a resume)
and builds the network; what it decides is one `RunPlan`, made once, that the epochs and the
files a run leaves only read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bone_apps.core.data.pairs import DataSummary
from bone_apps.core.data.sampling import Dims
from bone_apps.core.data.split import Split
from bone_apps.core.errors import BoneAppsError, FitConfigError
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.records import FitMessage
from bone_apps.core.jobs import ddp
from bone_apps.core.jobs.devices import ALL_GPUS, gpu_indices, parse_devices
from bone_apps.core.model.models import BORDER_PADDING
from bone_apps.core.model.spec import ModelSpec

Value = TypeVar("Value")


class _Devices:
    """Where fitting runs: the main device and, for DataParallel, the GPU ids."""

    def __init__(self, text: str, dist: ddp.DistInfo) -> None:
        import torch

        devices = parse_devices(text or "auto", FitConfigError)
        cuda = torch.cuda.is_available()
        self.ids: list[int] | None = None
        if devices == ["auto"]:
            devices = ["cuda" if cuda else "cpu"]
        if devices == ["cpu"]:
            self.device = torch.device("cpu")
            return
        if not cuda:
            raise FitConfigError("no CUDA GPU is available here: use {device} cpu (or auto).", "device")
        count = torch.cuda.device_count()
        if dist.enabled:  # torchrun: one GPU per process
            self.device = torch.device("cuda", dist.local_rank % count)
            return
        ids = gpu_indices(devices, count)
        if len(devices) == 1 and devices != [ALL_GPUS]:  # cuda or cuda:N
            index = ids[0]
            if index >= count:
                raise FitConfigError(f"GPU {index} does not exist ({count} present): use "
                                     f"cuda:0..{count - 1}.")
            self.device = torch.device("cuda", index)
            return
        if any(i >= count for i in ids):
            raise FitConfigError(f"device {text!r} names a GPU that does not exist ({count} "
                                 "present).")
        self.device = torch.device("cuda", ids[0])
        self.ids = ids if len(ids) > 1 else None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self, dist: ddp.DistInfo) -> str:
        if dist.enabled:
            return f"{dist.world} processes (DistributedDataParallel), this one on {self.device}"
        if self.ids:
            return f"GPUs {', '.join(map(str, self.ids))} (DataParallel)"
        return str(self.device)


@dataclass(frozen=True)
class RunPlan:
    """What one run fits, where and how, as setup decided it.

    config: the options as fitted (Easy mode's patch and batch, a resume's free options and
        epoch total); requested: what the run's user asked for before Easy mode adapted it
        (kept in the checkpoint, so the next resume compares against both).
    summary, split: the checked data and which scans fit and which validate.
    arch: the architecture in its registry spelling; in_channels: slices per input (2.5D
        context); multiple: the spatial size the network needs inputs to be a multiple of.
    """

    config: FitConfig
    requested: FitConfig
    out: Path
    dist: ddp.DistInfo
    devices: _Devices
    summary: DataSummary
    split: Split
    arch: str
    in_channels: int
    multiple: int
    init_note: str

    @property
    def dims(self) -> Dims:
        return Dims.parse(self.config.dims)

    @property
    def class_names(self) -> list[str]:
        return list(self.summary.class_names)

    @property
    def precision(self) -> str:
        """fp32, fp16 or bf16 ("auto": fp16 on CUDA, fp32 on the CPU)."""
        if self.config.precision == "auto":
            return "fp16" if self.devices.cuda else "fp32"
        return self.config.precision

    @property
    def spec(self) -> ModelSpec:
        """The description of the network this run fits, as its weights carry it."""
        labels = self.summary.label_map
        return ModelSpec.from_config(self.config, arch=self.arch, classes=self.summary.classes,
                                     class_names=self.summary.class_names,
                                     required_multiple=self.multiple,
                                     label_values=None if labels.is_identity else labels.values,
                                     padding=BORDER_PADDING)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The network's input for `batch` patches: (N, C, H, W) or (N, 1, D, H, W) in 3D."""
        cfg = self.config
        if self.dims is Dims.D3:
            return (batch, 1, cfg.patch_depth, cfg.patch, cfg.patch)
        return (batch, self.in_channels, cfg.patch, cfg.patch)


def fit_logger() -> logging.Logger:
    """The run's logger (its file handler is set by runfiles.open_fit_log)."""
    return logging.getLogger(runfiles.LOGGER_NAME)


def say(dist: ddp.DistInfo, text: str, level: str = "info") -> FitMessage:
    """A line for the user, also written to fit.log (by rank 0)."""
    if dist.is_main:
        logger = fit_logger()
        for line in text.splitlines():
            logger.info(line)
    return FitMessage(text, level)


def on_main(dist: ddp.DistInfo, func: Callable[[], Value]) -> Value:
    """Run `func` on rank 0 and hand its value (or its BoneAppsError) to every rank."""
    box: tuple = ("ok", None)
    if dist.is_main:
        try:
            box = ("ok", func())
        except BoneAppsError as exc:
            box = ("error", exc)
    box = ddp.broadcast_object(box, dist)
    if box[0] == "error":
        raise box[1]
    return box[1]
