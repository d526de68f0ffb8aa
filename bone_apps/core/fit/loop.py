"""Fitting: the generator that checks the data, splits it, builds the model and fits it.

`fit(config)` yields small progress records (FitMessage, StatsProgress, StepProgress,
EpochEnd) and ends with FitFinished(result). It honours a stop request between steps: the
state is saved in checkpoint.pth (mid-epoch included) and `fit(config, resume=True)` goes on
from there. In reproducible mode a resumed run ends with the same weights as an
uninterrupted one, because every random draw of the data path comes from (seed, epoch,
index) and every generator state is in the checkpoint.

Devices: CPU; one GPU with automatic mixed precision; several GPUs of one machine with
DataParallel; any number of processes under torchrun with DistributedDataParallel (each
rank fits its share of the tiles; only rank 0 writes files).
"""

from __future__ import annotations

import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.data.loader import TRAIN, VAL, FitBatches, FitSampler, make_loader
from bone_apps.core.data.normalize import NormMethod, default_cache_dir
from bone_apps.core.data.pairs import DataSummary, check_pairs, pairs_from_paths, pairs_from_root, with_level
from bone_apps.core.data.sampling import (
    Dims,
    PatchBatches,
    PatchLayout,
    ScanSource,
    patch_capacity,
)
from bone_apps.core.data.split import Split, split_scans, write_split
from bone_apps.core.errors import (
    BoneAppsError,
    Cancelled,
    FitConfigError,
    PretrainedUnavailableError,
)
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.checkpoint import (
    RunState,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from bone_apps.core.fit.config import FitConfig, resumed_config
from bone_apps.core.fit.slice_validation import (
    MIN_AGREEMENT,
    InferenceSettings,
    SliceScores,
    ValidationScan,
    score_slices,
)
from bone_apps.core.jobs import ddp
from bone_apps.core.jobs.devices import ALL_GPUS, gpu_indices, parse_devices
from bone_apps.core.jobs.monitor import ResourceMonitor
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.model.models import (
    BORDER_PADDING,
    REQUIRED_MULTIPLE_2D,
    REQUIRED_MULTIPLE_3D,
    build_model,
    canonical_architecture,
    check_encoder,
    required_multiple,
)
from bone_apps.core.model.weights import load_weights, save_weights, software_version, unwrap_model

# Training memory per patch pixel of a U-Net / ResNet-18 (activations, gradients, optimizer
# state), measured at 256 px in fp32 on the CPU; mixed precision roughly halves it. Easy
# mode uses it to keep the batch within half of the free memory.
_BYTES_PER_PIXEL_FP32 = 2048
# Easy mode on small data: the batch shrinks (not below EASY_MIN_BATCH) until an epoch holds
# EASY_MIN_STEPS updates. With the paper's batch of 64, a few scans of small slices give an
# epoch of a handful of updates and the fit ends undertrained (benchmarks/bench_heldout.py).
EASY_MIN_STEPS = 32
EASY_MIN_BATCH = 4
_REPORT_EVERY_S = 0.5  # how often a step reads the running loss back from the GPU


# ----------------------------------------------------------------------------------------------
# Progress records


@dataclass(frozen=True)
class FitMessage:
    """A line for the user (setup steps, notes, warnings)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class StatsProgress:
    """Scan statistics and mask checks: `done` of `total` volumes finished."""

    done: int
    total: int


@dataclass(frozen=True)
class StepProgress:
    """One batch done. `epoch` is 1-based; `loss` is the phase's running mean so far (read
    from the device at most twice a second, else the last value read)."""

    epoch: int
    epochs: int
    phase: str
    step: int
    steps: int
    loss: float | None
    lr: float


@dataclass(frozen=True)
class EpochEnd:
    """One epoch finished (1-based `epoch`); `row` is its log.csv row."""

    epoch: int
    epochs: int
    lr: float
    train_loss: float
    val_loss: float
    train_iou: float
    val_iou: float
    val_iou_per_class: dict[str, float | None]
    epoch_seconds: float
    improved: bool
    resources: dict
    row: dict


@dataclass(frozen=True)
class FitResult:
    """How a run ended. status: "completed" or "stopped"."""

    out: Path
    status: str
    epochs_done: int
    best_epoch: int | None
    best_val_iou: float | None
    model_path: Path | None
    checkpoint_path: Path | None
    summary: dict
    resume_hint: str | None = None


@dataclass(frozen=True)
class FitFinished:
    """The last record of a run."""

    result: FitResult


FitEvent = FitMessage | StatsProgress | StepProgress | EpochEnd | FitFinished


# ----------------------------------------------------------------------------------------------
# Helpers


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1, n)))))


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def _replan_schedule(scheduler, optimizer, cfg: FitConfig, epochs_done: int) -> None:
    """A resumed run with a new epoch total: the single cosine cycle is planned again over
    the new total, and the learning rate goes on from where that cycle stands after
    `epochs_done` epochs (as if the run had been started with the new total). Cosine with
    restarts and the constant rate do not depend on the total."""
    if cfg.scheduler.strip().lower() != "cosine":
        return
    scheduler.T_max = max(1, cfg.epochs)
    eta_min = getattr(scheduler, "eta_min", 0.0)
    rates = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * epochs_done / scheduler.T_max)) / 2
             for base in scheduler.base_lrs]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports until the next step


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
            raise FitConfigError("no CUDA GPU is available here: use --device cpu (or auto).")
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


# ----------------------------------------------------------------------------------------------
# The run


def fit(
    config: FitConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop: threading.Event | None = None,
) -> Generator[FitEvent, None, FitResult]:
    """Fit a model as `config` says, yielding progress; the last record is FitFinished.

    Args:
        config: the run's options.
        resume: continue the run in config.out from its checkpoint. Options that may not
            change are refused (fitconfig.resumed_config); a larger `epochs` fits the extra
            epochs, the cosine schedule planned again over the new total.
        overwrite: replace an earlier run in config.out.
        stop: set it to stop at the next safe point (between steps); the state is saved
            and the run can be resumed.

    Returns (as the generator's value, and in FitFinished): the FitResult.

    Raises:
        BoneAppsError: bad options or data (every data problem listed at once), an output
            folder holding another run, unavailable ImageNet weights, ...
    """
    run = _FitRun(config, resume, overwrite, stop or threading.Event())
    try:
        result = yield from run.execute()
    finally:
        run.close()
    return result


def run_fit(
    config: FitConfig, on_event: Callable[[FitEvent], None] | None = None, **kwargs,
) -> FitResult:
    """Drive `fit` to the end, passing each record to `on_event`; returns the result."""
    return run_to_end(fit(config, **kwargs), on_event)


class _FitRun:
    """State of one run; `execute()` is the generator behind fit()."""

    def __init__(self, config: FitConfig, resume: bool, overwrite: bool,
                 stop: threading.Event) -> None:
        self.requested = config
        self.original = config  # the options asked for, before Easy mode adapts them
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.stop = stop
        self.dist = ddp.DistInfo.from_env()
        self.out = Path(config.out).expanduser()
        self.logger = runfiles.open_fit_log(None)
        self.monitor = ResourceMonitor()
        self.loader = None
        self.notes: list[str] = []
        self._restore: list[Callable[[], None]] = []
        self.t_start = time.perf_counter()
        self.peaks = {"peak_ram_bytes": 0, "peak_vram_bytes": None}
        self.claim: runfiles.RunClaim | None = None  # rank 0's hold on the output folder

    # Plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        self.loader = None  # ends the worker processes
        self.monitor.stop()
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        runfiles.close_fit_log(self.logger)
        if self.claim is not None:  # keeps the run if it saved a checkpoint, else undoes it
            self.claim.release()
            self.claim = None
        if self.dist.enabled:
            ddp.destroy_process_group()

    def say(self, text: str, level: str = "info") -> FitMessage:
        if self.dist.is_main:
            for line in text.splitlines():
                self.logger.info(line)
        return FitMessage(text, level)

    def on_main(self, func: Callable[[], object]) -> object:
        """Run `func` on rank 0 and hand its value (or its BoneAppsError) to every rank."""
        box: tuple = ("ok", None)
        if self.dist.is_main:
            try:
                box = ("ok", func())
            except BoneAppsError as exc:
                box = ("error", exc)
        box = ddp.broadcast_object(box, self.dist)
        if box[0] == "error":
            raise box[1]
        return box[1]

    # The generator ----------------------------------------------------------------------------

    def execute(self) -> Generator[FitEvent, None, FitResult]:
        self.requested.validate()
        self.devices = _Devices(self.requested.device, self.dist)
        if self.devices.cuda:
            import torch

            torch.cuda.set_device(self.devices.device)  # NCCL binds each rank to its GPU
        ddp.init_process_group(self.dist, self.devices.cuda)
        if not self.resume and not self.requested.easy:  # Easy mode shrinks the batch instead
            self._check_batch_memory(self.requested)  # before anything is written
        self.monitor.start()
        checkpoint = self.on_main(self._prepare_out)
        if self.dist.is_main:
            self.logger = runfiles.open_fit_log(self.out / runfiles.FIT_LOG)
        if checkpoint is not None:
            self.config, planned = self._resumed(checkpoint), checkpoint["config"]["epochs"]
            yield self.say(f"resuming {self.out} at epoch {checkpoint['state']['epoch'] + 1} "
                           f"({checkpoint['state']['phase']}, batch {checkpoint['state']['batch']})"
                           + (f", now {self.config.epochs} epochs in all (was {planned})"
                              if self.config.epochs != planned else ""))
        else:
            yield self.say(f"bone_apps {software_version()}: fitting into {self.out}")
        cfg = self.config
        self._set_determinism(cfg)

        summary = yield from self._check_data(cfg)
        yield self.say(summary.text())
        split = self._split(cfg, summary, checkpoint)
        yield self.say(f"split (seed {cfg.seed}): {len(split.train)} scans fit "
                       f"({', '.join(split.train)}), {len(split.val)} validate "
                       f"({', '.join(split.val)})")
        if checkpoint is None:
            cfg = self.on_main(lambda: self._adjust(cfg, summary, split))
            self.config = cfg
        for note in self.notes:
            yield self.say(note, "note")
        self.notes.clear()
        self._check_patch_geometry(cfg)
        self._check_patch_fits(cfg, summary, split)

        model, init_note = self._build_model(cfg, summary, checkpoint)
        yield self.say(init_note)
        if self.dist.is_main and (checkpoint is None
                                  or cfg.epochs != checkpoint["config"]["epochs"]):
            cfg.save(self.out / runfiles.CONFIG)  # a resumed run may have a new epoch total
        yield from self._complexity(cfg, model, summary)
        yield from self._loop(cfg, model, summary, split, checkpoint)
        return self.result

    # Setup steps ------------------------------------------------------------------------------

    def _prepare_out(self) -> dict | None:
        self.claim = runfiles.prepare_out(self.out, self.resume, self.overwrite)
        if not self.resume:
            return None
        checkpoint = load_checkpoint(self.out / runfiles.CHECKPOINT)
        self._resumed(checkpoint)  # refuses changed options before any work
        return checkpoint

    def _resumed(self, checkpoint: dict) -> FitConfig:
        """The configuration the resumed run goes on with (fitconfig.resumed_config's rule)."""
        saved = FitConfig.from_dict(checkpoint["config"])
        original = FitConfig.from_dict(checkpoint.get("requested_config", checkpoint["config"]))
        config = resumed_config(saved, self.requested, int(checkpoint["state"]["epoch"]),
                                str(self.out), original)
        # What the user asked for, kept for the next resume (with the new epoch total).
        self.original = original.replace(epochs=config.epochs)
        return config

    def _set_determinism(self, cfg: FitConfig) -> None:
        import torch

        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)

        def restore() -> None:
            if torch.are_deterministic_algorithms_enabled() != previous[0]:
                # Only when changed: the call takes up to seconds, and it runs on every stop.
                torch.use_deterministic_algorithms(previous[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]

        self._restore.append(restore)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if cfg.reproducible:
            # cuBLAS needs this workspace setting for deterministic results; it is read when
            # CUDA starts, which happens later in this process.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True

    def _check_data(self, cfg: FitConfig) -> Generator[FitEvent, None, DataSummary]:
        """Find and check every pair on rank 0 (statistics in parallel processes)."""
        events: queue.Queue = queue.Queue()
        box: dict = {}

        def work() -> None:
            try:
                pairs = []
                if cfg.data:
                    pairs += pairs_from_root(Path(cfg.data), self.notes)  # said after the checks
                pairs += pairs_from_paths(cfg.pairs)
                pairs = with_level(pairs, cfg.level)
                cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
                box["summary"] = check_pairs(
                    pairs, cfg.class_names or None, cfg.stats_workers, cache,
                    lambda done, total: events.put(StatsProgress(done, total)))
            except Exception as exc:  # noqa: BLE001 - re-raised in the generator below
                box["error"] = exc

        if self.dist.is_main:
            yield self.say("checking scan/mask pairs and computing per-scan statistics")
            thread = threading.Thread(target=work, name="bone-fit-checks", daemon=True)
            thread.start()
            while thread.is_alive() or not events.empty():
                self._cancel_if_stopped()
                try:
                    yield events.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()
            self._cancel_if_stopped()  # a stop that also ended the checks (their processes)
        result = ddp.broadcast_object(
            ("error", box["error"]) if "error" in box else ("ok", box.get("summary")), self.dist)
        if result[0] == "error":
            raise result[1]
        return result[1]

    def _cancel_if_stopped(self) -> None:
        if not self.dist.enabled and self.stop.is_set():
            # Checks can take minutes on real scans; nothing is fitted yet, so nothing needs
            # saving (the statistics finished so far stay cached).
            raise Cancelled("fitting was stopped while the scans were being checked; nothing "
                            "was fitted yet.")

    def _split(self, cfg: FitConfig, summary: DataSummary, checkpoint: dict | None) -> Split:
        if checkpoint is not None:
            split = Split.from_dict(checkpoint["split"])
            missing = [i for i in split.train + split.val if i not in summary.by_id()]
            if missing:
                raise FitConfigError(f"scans {', '.join(missing)} of the run being resumed are "
                                     "missing: give the same data.")
            return split
        split = split_scans([i.pair.id for i in summary.infos], cfg.train_fraction, cfg.seed,
                            cfg.val_scans or None)
        if self.dist.is_main:
            write_split(self.out / runfiles.SPLIT, split)
        return split

    def _adjust(self, cfg: FitConfig, summary: DataSummary, split: Split) -> FitConfig:
        """Easy mode: shrink patch and batch to what the data and memory allow (with notes)."""
        if not cfg.easy:
            return cfg
        infos = summary.by_id()
        side = min(min(infos[i].shape[1:]) for i in split.train + split.val)
        patch = cfg.patch
        if side < patch:
            patch = max(REQUIRED_MULTIPLE_2D, side // REQUIRED_MULTIPLE_2D * REQUIRED_MULTIPLE_2D)
            self.notes.append(f"Easy mode: patches shrink from {cfg.patch} to {patch} px because "
                              f"the smallest scan is {side} px across.")
        patches = sum(infos[i].shape[0] * min(cfg.patches_per_tile, patch_capacity(
            infos[i].shape[1], infos[i].shape[2], patch, cfg.max_overlap)) for i in split.train)
        batch = cfg.batch
        if patches < EASY_MIN_STEPS * batch:
            batch = max(EASY_MIN_BATCH, _pow2_floor(patches // EASY_MIN_STEPS))
            self.notes.append(f"Easy mode: batch shrinks from {cfg.batch} to {batch} patches "
                              f"because an epoch holds only {patches} training patches (at "
                              f"least {EASY_MIN_STEPS} updates per epoch).")
        free = self._free_memory()
        per_patch = _BYTES_PER_PIXEL_FP32 * patch * patch // (2 if self.devices.cuda else 1)
        if free and batch * per_patch > free // 2:
            fitting = max(2, _pow2_floor(free // 2 // per_patch))
            if fitting < batch:
                self.notes.append(
                    f"Easy mode: batch shrinks from {batch} to {fitting} patches to fit in the "
                    f"{free / 2**30:.1f} GB of free {'GPU ' if self.devices.cuda else ''}memory.")
                batch = fitting
        return cfg.replace(patch=patch, batch=batch)

    def _free_memory(self) -> int:
        import psutil
        import torch

        if self.devices.cuda:
            free, _ = torch.cuda.mem_get_info(self.devices.device)
            return int(free)
        return int(psutil.virtual_memory().available)

    def _check_batch_memory(self, cfg: FitConfig) -> None:
        """On the CPU, refuse a batch whose training memory cannot fit in the available RAM.

        The estimate is rough: _BYTES_PER_PIXEL_FP32 per patch pixel (per voxel in 3D), as
        measured for a U-Net with a ResNet-18 encoder (3D BasicUNet needs less). GPUs are
        not checked here; CUDA reports running out of memory itself.
        """
        if self.devices.cuda:
            return
        voxels = cfg.patch * cfg.patch * (cfg.patch_depth if Dims.parse(cfg.dims) is Dims.D3 else 1)
        per_patch = _BYTES_PER_PIXEL_FP32 * voxels
        free = self._free_memory()
        if not free or cfg.batch * per_patch <= free:
            return
        size = f"{cfg.patch} px" + (f" x {cfg.patch_depth}-slice" if voxels > cfg.patch ** 2 else "")
        need = (f"about {cfg.batch * per_patch / 2**30:,.1f} GB of memory to fit {size} patches "
                f"on the CPU, but {free / 2**30:.1f} GB is available")
        largest = free // per_patch
        if largest < 1:
            raise FitConfigError(f"--batch {cfg.batch} needs {need}: even one patch does not "
                                 "fit, so use a smaller --patch.")
        raise FitConfigError(f"--batch {cfg.batch} needs {need}: use --batch {largest} or less.")

    def _check_patch_fits(self, cfg: FitConfig, summary: DataSummary, split: Split) -> None:
        """Refuse patches more than twice the smallest slice (or, in 3D, a patch depth more
        than twice the thinnest scan): tiles smaller than a patch are padded by mirroring,
        and beyond twice their size a patch would be mostly mirror images."""
        infos = summary.by_id()
        used = split.train + split.val
        dims = Dims.parse(cfg.dims)
        multiple = REQUIRED_MULTIPLE_3D if dims is Dims.D3 else REQUIRED_MULTIPLE_2D
        scan = min(used, key=lambda i: min(infos[i].shape[1:]))
        side = min(infos[scan].shape[1:])
        largest = max(multiple, 2 * side // multiple * multiple)
        if cfg.patch > largest:
            height, width = infos[scan].shape[1:]
            raise FitConfigError(f"--patch {cfg.patch} is more than twice the smallest slice "
                                 f"({height}x{width} px, scan {scan}): use --patch {largest} or "
                                 f"less (a multiple of {multiple}).")
        if dims is Dims.D3:
            scan = min(used, key=lambda i: infos[i].shape[0])
            depth = infos[scan].shape[0]
            largest = max(REQUIRED_MULTIPLE_3D, 2 * depth // REQUIRED_MULTIPLE_3D * REQUIRED_MULTIPLE_3D)
            if cfg.patch_depth > largest:
                raise FitConfigError(f"--patch-depth {cfg.patch_depth} is more than twice the "
                                     f"thinnest scan ({depth} slices, scan {scan}): use "
                                     f"--patch-depth {largest} or less (a multiple of "
                                     f"{REQUIRED_MULTIPLE_3D}).")

    def _check_patch_geometry(self, cfg: FitConfig) -> None:
        dims = Dims.parse(cfg.dims)
        multiple = REQUIRED_MULTIPLE_3D if dims is Dims.D3 else REQUIRED_MULTIPLE_2D
        if cfg.patch % multiple:
            lower = max(multiple, cfg.patch // multiple * multiple)
            raise FitConfigError(f"patch size {cfg.patch} is not a multiple of {multiple}, which "
                                 f"the network needs: use {lower} or {lower + multiple}.")
        depth_multiple = REQUIRED_MULTIPLE_3D
        if dims is Dims.D3 and cfg.patch_depth % depth_multiple:
            lower = max(depth_multiple, cfg.patch_depth // depth_multiple * depth_multiple)
            raise FitConfigError(f"patch depth {cfg.patch_depth} is not a multiple of {depth_multiple}, "
                                 f"which the 3D network needs: use {lower} or {lower + depth_multiple}.")
        if dims is Dims.D3 and cfg.patch == cfg.patch_depth == depth_multiple:
            # After four poolings a 16x16x16 patch is one voxel, which instance norm cannot fit.
            raise FitConfigError(f"a {cfg.patch}x{cfg.patch}x{cfg.patch_depth} patch shrinks to a single "
                                 f"voxel inside the 3D network: use --patch {2 * depth_multiple} or "
                                 f"--patch-depth {2 * depth_multiple}.")

    def _build_model(self, cfg: FitConfig, summary: DataSummary, checkpoint: dict | None):
        import torch

        dims = Dims.parse(cfg.dims)
        arch = canonical_architecture(cfg.arch, dims.value)
        check_encoder(cfg.encoder, dims.value)
        in_channels = 2 * cfg.context + 1 if dims is Dims.D25 else 1
        self.arch, self.in_channels, self.classes = arch, in_channels, summary.classes
        init = cfg.init
        weights = None
        if checkpoint is None and (init == "imagenet" or (init == "auto" and dims is not Dims.D3)):
            weights = "imagenet"
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
        note = ""
        try:
            model = build_model(dims.value, arch, cfg.encoder, in_channels, summary.classes,
                                weights, cfg.patch_depth)
            if weights:
                note = f"initial weights: ImageNet ({cfg.encoder} encoder)"
        except PretrainedUnavailableError as exc:
            if init != "auto":
                raise
            torch.manual_seed(cfg.seed)
            model = build_model(dims.value, arch, cfg.encoder, in_channels, summary.classes,
                                None, cfg.patch_depth)
            reason = str(exc).split(":")[0]  # the cause, without the advice to choose random
            note = f"initial weights: random, because {reason}"
        if not note:
            if checkpoint is not None:
                note = "initial weights: from the checkpoint"
            elif init in ("random", "auto"):
                note = "initial weights: random" + (" (no ImageNet weights for 3D networks)"
                                                    if init == "auto" else "")
            else:
                note = self._transfer(model, Path(init), dims.value, arch, cfg, summary)
        self.init_note = note
        self.multiple = required_multiple(model, dims.value)
        return model, note

    def _transfer(self, model, path: Path, dims: str, arch: str, cfg: FitConfig,
                  summary: DataSummary) -> str:
        """Load a weights file of this suite: all weights, or all but a new head."""
        from bone_apps.core.model.weights import load_weights

        state, meta = load_weights(path)
        mismatch = [f"{k} {meta.get(k)} (this run: {v})" for k, v in (
            ("dims", dims), ("arch", arch), ("encoder", cfg.encoder),
            ("in_channels", self.in_channels)) if str(meta.get(k)).lower() != str(v).lower()]
        if mismatch:
            raise FitConfigError(f"{path} does not fit this model: {'; '.join(mismatch)}. Choose "
                                 "matching --dims/--arch/--encoder/--context or another file.")
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(usable))
        model.load_state_dict(usable, strict=False)
        if not skipped:
            return f"initial weights: all from {path} (transfer learning)"
        return (f"initial weights: encoder and decoder from {path}; new head for "
                f"{summary.classes} classes (the file has {meta.get('classes')}): "
                f"{len(skipped)} tensors start random ({', '.join(skipped[:4])}"
                f"{', ...' if len(skipped) > 4 else ''})")

    def _complexity(self, cfg: FitConfig, model, summary: DataSummary) -> Generator[FitEvent, None, None]:
        """Parameters and FLOPs of one batch (fvcore), once, on rank 0."""
        import torch

        self.complexity: dict = {"parameters": sum(p.numel() for p in model.parameters()),
                                 "flops_per_batch": None}
        if not self.dist.is_main:
            return
        text = f"parameters: {self.complexity['parameters']:,}"
        if cfg.profile:
            try:
                import warnings

                with warnings.catch_warnings():
                    # fvcore scripts a function at import, which this torch calls deprecated.
                    warnings.simplefilter("ignore", FutureWarning)
                    from fvcore.nn import FlopCountAnalysis, parameter_count_table

                self.logger.info("parameters by module:\n" + parameter_count_table(model, max_depth=2))
                shape = self._input_shape(cfg, 1)
                was_training = model.training
                model.eval()
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer chatter about this one trace
                    analysis = FlopCountAnalysis(model, torch.zeros(shape))
                    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                    per_patch = int(analysis.total())
                model.train(was_training)
                self.complexity["flops_per_batch"] = per_patch * cfg.batch
                text += (f"; {per_patch * cfg.batch / 1e9:.2f} GFLOPs per batch of {cfg.batch} "
                         "(fvcore: one multiply-add counts as one)")
            except Exception as exc:  # noqa: BLE001 - tracing is optional; fitting goes on
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                text += f"; FLOPs not counted: fvcore could not trace {self.arch} ({reason})"
        yield self.say(text)

    def _input_shape(self, cfg: FitConfig, batch: int) -> tuple[int, ...]:
        if Dims.parse(cfg.dims) is Dims.D3:
            return (batch, 1, cfg.patch_depth, cfg.patch, cfg.patch)
        return (batch, self.in_channels, cfg.patch, cfg.patch)

    # The loop ---------------------------------------------------------------------------------

    def _datasets(self, cfg: FitConfig, summary: DataSummary, split: Split):
        infos = summary.by_id()

        def sources(ids):
            return [ScanSource(i, infos[i].pair.scan, infos[i].pair.mask, infos[i].shape,
                               infos[i].stats) for i in ids]

        layout = PatchLayout(Dims.parse(cfg.dims), cfg.patch, cfg.patches_per_tile,
                             cfg.max_overlap, cfg.context, cfg.patch_depth)
        per_rank = max(1, math.ceil(cfg.batch / self.dist.world))
        common = dict(layout=layout, norm=cfg.norm, batch=per_rank, seed=cfg.seed,
                      rank=self.dist.rank, world=self.dist.world, classes=summary.classes,
                      label_values=summary.label_map.values)
        train = PatchBatches(sources(split.train), train=True,
                             augment=cfg.augmentation if cfg.augment else None, **common)
        val = PatchBatches(sources(split.val), train=False, **common)
        return train, val

    def _loop(self, cfg: FitConfig, model, summary: DataSummary, split: Split,
              checkpoint: dict | None) -> Generator[FitEvent, None, None]:
        import torch
        from torchmetrics.classification import MulticlassJaccardIndex

        from bone_apps.core.model.losses import build_loss, build_optimizer, build_scheduler

        device = self.devices.device
        model = model.to(device)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if self.devices.cuda else None)
        elif self.devices.ids:
            net = torch.nn.DataParallel(model, device_ids=self.devices.ids)
        else:
            net = model
        self.net = net
        loss_fn = build_loss(cfg.loss)
        optimizer = build_optimizer(cfg.optimizer, net.parameters(), cfg.lr, cfg.weight_decay)
        scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, cfg.restart_epochs)
        precision = cfg.precision
        if precision == "auto":
            precision = "fp16" if self.devices.cuda else "fp32"
        amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and self.devices.cuda)
        state = RunState()
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            set_rng_states(checkpoint["rng"])
            state = RunState.from_dict(checkpoint["state"])
            if cfg.epochs != checkpoint["config"]["epochs"]:
                _replan_schedule(scheduler, optimizer, cfg, state.epoch)

        def metric():
            return MulticlassJaccardIndex(summary.classes, average="none", validate_args=False,
                                          zero_division=float("nan")).to(device)

        train_metric, val_metric = metric(), metric()
        train_ds, val_ds = self._datasets(cfg, summary, split)
        dataset = FitBatches(train_ds, val_ds)
        sampler = FitSampler(dataset)
        self.loader = make_loader(dataset, sampler, cfg.workers, cfg.seed, self.devices.cuda)
        per_epoch = train_ds.patches_per_epoch
        yield self.say(
            f"{Dims.parse(cfg.dims).value} patches of {cfg.patch} px"
            + (f" x {cfg.patch_depth} slices" if Dims.parse(cfg.dims) is Dims.D3 else "")
            + f": {train_ds.tiles} training tiles, {per_epoch} training and "
            f"{val_ds.patches_per_epoch} validation patches per epoch, batch {cfg.batch}"
            f"{f' ({train_ds.batch} per process)' if self.dist.enabled else ''}; "
            f"device {self.devices.describe(self.dist)}, precision {precision}, "
            f"{self.loader.num_workers} loader workers")
        self.setup_s = time.perf_counter() - self.t_start
        class_names = list(summary.class_names)
        self.state = state
        self.stopped = False
        step_seconds = 0.0

        while state.epoch < cfg.epochs:
            epoch = state.epoch
            t_epoch = time.perf_counter()
            self.monitor.reset_peaks()
            lr = float(optimizer.param_groups[0]["lr"])
            partial = state.partial or {}
            sums = {"train_loss": torch.zeros((), dtype=torch.float64, device=device),
                    "val_loss": torch.zeros((), dtype=torch.float64, device=device)}
            counts = {"train": int(partial.get("train_n", 0)), "val": 0}
            sums["train_loss"] += float(partial.get("train_loss_sum", 0.0))
            train_metric.reset()
            val_metric.reset()
            if "train_confmat" in partial:
                train_metric.confmat = partial["train_confmat"].to(device)
            epoch_offset = float(partial.get("epoch_seconds", 0.0))
            start_phase = VAL if state.phase == "val" else TRAIN
            sampler.set_epoch(epoch, start_phase, state.batch)
            steps = {TRAIN: train_ds.batches_per_epoch(epoch), VAL: val_ds.batches_per_epoch()}
            net.train()
            last_report, running = 0.0, None
            phase_now = start_phase
            stopped_at: tuple[int, int] | None = None
            for phase, b, image, mask in self.loader:
                phase, b = int(phase), int(b)
                if phase != phase_now:
                    phase_now, running, last_report = phase, None, 0.0
                if phase == TRAIN:
                    if self._stop_requested(device):
                        stopped_at = (TRAIN, b)
                        break
                elif not self.dist.enabled and self.stop.is_set():
                    stopped_at = (VAL, 0)  # validation restarts; it changes nothing
                    break
                image = image.to(device, non_blocking=True)
                target = mask.to(device, non_blocking=True).long()
                n = image.shape[0]
                t0 = time.perf_counter()
                if phase == TRAIN:
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = net(image)
                    loss = loss_fn(logits.float(), target)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step_seconds += time.perf_counter() - t0
                    with torch.no_grad():
                        sums["train_loss"] += loss.detach().double() * n
                        train_metric.update(logits.detach().argmax(1), target)
                    counts["train"] += n
                    key = "train"
                else:
                    if net.training:
                        net.eval()
                    with torch.no_grad(), torch.autocast(
                            device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = unwrap_model(net)(image) if self.dist.enabled else net(image)
                        loss = loss_fn(logits.float(), target)
                    step_seconds += time.perf_counter() - t0
                    sums["val_loss"] += loss.double() * n
                    val_metric.update(logits.argmax(1), target)
                    counts["val"] += n
                    key = "val"
                now = time.perf_counter()
                if not self.devices.cuda or now - last_report >= _REPORT_EVERY_S or b + 1 == steps[phase]:
                    running = float(sums[f"{key}_loss"].item()) / max(1, counts[key])
                    last_report = now
                yield StepProgress(epoch + 1, cfg.epochs, key, b + 1, steps[phase], running, lr)

            if stopped_at is not None:
                state.phase = "train" if stopped_at[0] == TRAIN else "val"
                state.batch = stopped_at[1]
                state.partial = {
                    "train_loss_sum": float(sums["train_loss"].item()), "train_n": counts["train"],
                    "train_confmat": train_metric.confmat.detach().cpu().clone(),
                    "epoch_seconds": epoch_offset + time.perf_counter() - t_epoch}
                state.fit_seconds += time.perf_counter() - t_epoch
                self.stopped = True
                break

            # End of the epoch: gather numbers from every rank.
            net.train()
            totals = ddp.all_reduce_sum([float(sums["train_loss"].item()), counts["train"],
                                         float(sums["val_loss"].item()), counts["val"]], device)
            train_loss = totals[0] / max(1, totals[1])
            val_loss = totals[2] / max(1, totals[3])
            train_per_class = train_metric.compute().tolist()
            val_per_class = val_metric.compute().tolist()
            train_iou, val_iou = _nanmean(train_per_class), _nanmean(val_per_class)
            val_patch_iou = val_iou
            if cfg.val_slices >= 0 and self.dist.is_main:
                # What the user will get: whole validation slices through the prediction inferer.
                scores = self._score_slices(cfg, unwrap_model(net), summary, split,
                                            [InferenceSettings()])[0]
                val_per_class, val_iou = scores.per_class_iou, scores.mean_iou
            scheduler.step()
            epoch_seconds = epoch_offset + time.perf_counter() - t_epoch
            state.fit_seconds += time.perf_counter() - t_epoch
            improved = math.isfinite(val_iou) and (state.best_iou is None or val_iou > state.best_iou)
            per_class = {name: (None if not math.isfinite(v) else v)
                         for name, v in zip(class_names, val_per_class)}
            resources = self.monitor.snapshot()
            if self.devices.cuda:
                resources["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
                torch.cuda.reset_peak_memory_stats(device)
            self.peaks["peak_ram_bytes"] = max(self.peaks["peak_ram_bytes"], resources["peak_rss_bytes"])
            if resources["peak_vram_bytes"] is not None:
                self.peaks["peak_vram_bytes"] = max(self.peaks["peak_vram_bytes"] or 0,
                                                    resources["peak_vram_bytes"])
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "val_loss": val_loss,
                   "train_iou": train_iou, "val_iou": val_iou, "val_patch_iou": val_patch_iou,
                   **{f"val_iou_{name}": v for name, v in per_class.items()},
                   "epoch_time_s": epoch_seconds, "fit_time_s": state.fit_seconds,
                   "step_time_s": step_seconds,
                   "peak_ram_mb": resources["peak_rss_bytes"] / 2**20,
                   "gpu_util_percent": resources["mean_gpu_utilization"],
                   "peak_vram_mb": (None if resources["peak_vram_bytes"] is None
                                    else resources["peak_vram_bytes"] / 2**20)}
            state.history.append(row)
            if improved:
                state.best_iou, state.best_epoch = val_iou, epoch + 1
            state.epoch, state.phase, state.batch, state.partial = epoch + 1, "train", 0, {}
            if self.dist.is_main:
                if improved:
                    self._save_model(cfg, model, summary, row, per_class)
                self._save_checkpoint(cfg, model, optimizer, scheduler, scaler, split, summary)
                runfiles.write_log_csv(self.out / runfiles.LOG_CSV, state.history)
                self.logger.info(
                    f"epoch {epoch + 1}/{cfg.epochs}: lr {lr:.3g}, loss {train_loss:.4f} / "
                    f"{val_loss:.4f}, IoU {train_iou:.4f} / {val_iou:.4f} (train / val"
                    + (f" on whole slices; {val_patch_iou:.4f} on patches, gap "
                       f"{val_patch_iou - val_iou:+.4f}" if val_patch_iou != val_iou else "") + "), "
                    + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} absent"
                                for k, v in per_class.items())
                    + f"; {epoch_seconds:.1f} s, peak RAM {resources['peak_rss_bytes'] / 2**30:.2f} GB"
                    + (" (best so far, saved)" if improved else ""))
            yield EpochEnd(epoch + 1, cfg.epochs, lr, train_loss, val_loss, train_iou, val_iou,
                           per_class, epoch_seconds, improved, resources, row)
            if self._stop_requested(device):
                self.stopped = state.epoch < cfg.epochs
                break

        self.step_seconds = step_seconds
        self.fitted_model = model
        if self.stopped and self.dist.is_main:
            self._save_checkpoint(cfg, model, optimizer, scheduler, scaler, split, summary)
        self.loader = None
        yield from self._finish(cfg, summary, split, train_ds)

    def _stop_requested(self, device) -> bool:
        """Whether to stop now; under DDP every rank answers the same (a stop on any rank)."""
        if self.dist.enabled:
            return ddp.any_rank(self.stop.is_set(), device)
        return self.stop.is_set()

    # Saving -----------------------------------------------------------------------------------

    def _weights_meta(self, cfg: FitConfig, summary: DataSummary, row: dict, per_class: dict) -> dict:
        dims = Dims.parse(cfg.dims)
        return {
            "version": software_version(), "dims": dims.value, "arch": self.arch,
            "encoder": cfg.encoder, "in_channels": self.in_channels, "classes": summary.classes,
            "class_names": list(summary.class_names), "patch_size": cfg.patch,
            "label_values": list(summary.label_map.values),  # mask value of class 0, 1, ...
            "context": cfg.context if dims is Dims.D25 else 0,
            "patch_depth": cfg.patch_depth if dims is Dims.D3 else 1,
            "norm": NormMethod.parse(cfg.norm).value, "fit_config": cfg.to_dict(),
            "best_epoch": row["epoch"],
            "metrics": {"val_iou": row["val_iou"], "val_loss": row["val_loss"],
                        "train_iou": row["train_iou"], "train_loss": row["train_loss"],
                        "val_iou_per_class": per_class},
            "required_multiple": self.multiple, "padding": BORDER_PADDING,
        }

    def _score_slices(self, cfg: FitConfig, model, summary: DataSummary, split: Split,
                      settings: list[InferenceSettings]) -> list[SliceScores]:
        """Slice-level validation of `model` (left in eval mode) with each of `settings`."""
        import torch

        infos = summary.by_id()
        scans = [ValidationScan(infos[i].pair.scan, infos[i].pair.mask, infos[i].stats)
                 for i in split.val]
        meta = self._weights_meta(cfg, summary, {"epoch": 0, "val_iou": None, "val_loss": None,
                                                 "train_iou": None, "train_loss": None}, {})
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return score_slices(model, str(self.devices.device), meta, scans, settings,
                                    cfg.val_slices, summary.label_map)
        finally:
            model.train(was_training)

    def _choose_inference(self, cfg: FitConfig, summary: DataSummary, split: Split) -> dict | None:
        """Check the best model's labels against window size; record in its weights the
        prediction settings that reproduce its slice-level validation (patch-sized windows
        when larger ones change its labels)."""
        path = self.out / runfiles.MODEL
        model = getattr(self, "fitted_model", None)
        if model is None or not path.exists() or cfg.val_slices < 0 or not self.dist.is_main:
            return None
        state, meta = load_weights(path)
        model.load_state_dict(state)
        default, patch = self._score_slices(
            cfg, model, summary, split, [InferenceSettings(), InferenceSettings.patch_sized(cfg.patch)])
        dependent = patch.agreement < MIN_AGREEMENT
        chosen = patch if dependent else default
        inference = {**chosen.settings.to_dict(), "val_iou": chosen.mean_iou,
                     "agreement": patch.agreement, "window_dependent": dependent,
                     "val_iou_default_windows": default.mean_iou,
                     "val_iou_patch_windows": patch.mean_iou}
        meta["inference"] = inference
        save_weights(path, model, runfiles.finite(meta))
        text = (f"window check: {cfg.patch} px and {InferenceSettings().chunk} px windows label "
                f"{patch.agreement:.2%} of validation voxels alike (whole-slice mIoU "
                f"{patch.mean_iou:.4f} / {default.mean_iou:.4f}); prediction defaults to "
                f"{chosen.settings.text()}")
        if dependent:
            text += " because larger windows change this model's labels"
        self.logger.info(text)
        return inference

    def _save_model(self, cfg, model, summary, row, per_class) -> None:
        save_weights(self.out / runfiles.MODEL, model, runfiles.finite(
            self._weights_meta(cfg, summary, row, per_class)))

    def _save_checkpoint(self, cfg, model, optimizer, scheduler, scaler, split, summary) -> None:
        save_checkpoint(self.out / runfiles.CHECKPOINT, {
            "config": cfg.to_dict(), "requested_config": self.original.to_dict(),
            "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_states(), "state": self.state.to_dict(),
            "split": split.to_dict(), "classes": summary.classes,
            "class_names": list(summary.class_names), "version": software_version()})

    def _finish(self, cfg: FitConfig, summary: DataSummary, split: Split,
                train_ds: PatchBatches) -> Generator[FitEvent, None, None]:
        state = self.state
        status = "stopped" if self.stopped else "completed"
        best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
        wall = time.perf_counter() - self.t_start
        summary_data = {
            "status": status, "epochs_done": state.epoch, "epochs": cfg.epochs,
            "best_epoch": state.best_epoch, "best_val_iou": state.best_iou,
            "best_metrics": best_row, "last_epoch": state.history[-1] if state.history else None,
            "times": {"setup_s": self.setup_s, "fit_loop_s": state.fit_seconds,
                      "step_s": self.step_seconds, "wall_s": wall},
            "peaks": {**self.peaks, "mean_gpu_utilization": self.monitor.mean_gpu_utilization},
            "complexity": self.complexity, "init": self.init_note,
            "device": self.devices.describe(self.dist), "world_size": self.dist.world,
            "classes": list(summary.class_names), "split": split.to_dict(),
            "label_values": list(summary.label_map.values),
            "patches_per_epoch": train_ds.patches_per_epoch, "version": software_version(),
        }
        model_path = self.out / runfiles.MODEL
        if not self.stopped:
            summary_data["inference"] = self._choose_inference(cfg, summary, split)
            if best_row is not None and best_row.get("val_patch_iou") is not None:
                summary_data["val_patch_slice_gap"] = best_row["val_patch_iou"] - best_row["val_iou"]
        hint = None
        if self.stopped:
            hint = f"bone fit --resume {self.out}"
        if self.dist.is_main:
            runfiles.write_json(self.out / runfiles.SUMMARY, summary_data)
            if self.stopped:
                self.logger.info(f"stopped at epoch {state.epoch + 1}, {state.phase} batch "
                                 f"{state.batch}; continue with: {hint}")
            else:
                self.logger.info(f"done: best validation IoU {state.best_iou} at epoch "
                                 f"{state.best_epoch}; {wall:.1f} s in all")
        self.result = FitResult(
            out=self.out, status=status, epochs_done=state.epoch, best_epoch=state.best_epoch,
            best_val_iou=state.best_iou,
            model_path=model_path if model_path.exists() else None,
            checkpoint_path=self.out / runfiles.CHECKPOINT, summary=summary_data, resume_hint=hint)
        yield FitFinished(self.result)


__all__ = ["EpochEnd", "FitEvent", "FitFinished", "FitMessage", "FitResult",
           "StatsProgress", "StepProgress", "fit", "run_fit"]
