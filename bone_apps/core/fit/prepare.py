"""Setting a run up: the output folder and the checkpoint to resume, random generators, the data
checks, the split, Easy mode's adjustments, and the checks that patches and batch suit the data,
the network and the memory. Each step is a function fit() calls in order; none keeps state.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from bone_apps.core.data.normalize import default_cache_dir, stats_with_progress
from bone_apps.core.data.pairs import DataSummary, check_pairs, pairs_from_paths, pairs_from_root, with_level
from bone_apps.core.data.sampling import Dims, patch_capacity
from bone_apps.core.data.split import Split, split_scans, write_split
from bone_apps.core.errors import FitConfigError
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.checkpoint import load_checkpoint
from bone_apps.core.fit.config import FitConfig, resumed_config
from bone_apps.core.fit.plan import _Devices, say
from bone_apps.core.fit.records import FitEvent
from bone_apps.core.jobs import ddp

# Training memory per patch pixel of a U-Net / ResNet-18 (activations, gradients, optimizer
# state), measured at 256 px in fp32 on the CPU; mixed precision roughly halves it. Easy
# mode uses it to keep the batch within half of the free memory.
_BYTES_PER_PIXEL_FP32 = 2048
# Easy mode on small data: the batch shrinks (not below EASY_MIN_BATCH) until an epoch holds
# EASY_MIN_STEPS updates. With the paper's batch of 64, a few scans of small slices give an
# epoch of a handful of updates and the fit ends undertrained (benchmarks/bench_heldout.py).
EASY_MIN_STEPS = 32
EASY_MIN_BATCH = 4


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1, n)))))


# ----------------------------------------------------------------------------------------------
# Resuming


def resumed(requested: FitConfig, checkpoint: dict, out: Path) -> tuple[FitConfig, FitConfig]:
    """The configuration a resumed run goes on with (FitConfig's resume rule,
    config.resumed_config), and what its user asked for before Easy mode adapted it (with
    the new epoch total, kept for the next resume)."""
    saved = FitConfig.from_dict(checkpoint["config"])
    original = FitConfig.from_dict(checkpoint.get("requested_config", checkpoint["config"]))
    config = resumed_config(saved, requested, int(checkpoint["state"]["epoch"]), str(out), original)
    return config, original.replace(epochs=config.epochs)


def load_resumable(out: Path, requested: FitConfig) -> dict:
    """The checkpoint of the run in `out`, once `requested` is known to go on with it (changed
    options are refused before any work)."""
    checkpoint = load_checkpoint(out / runfiles.CHECKPOINT)
    resumed(requested, checkpoint, out)
    return checkpoint


def set_determinism(cfg: FitConfig) -> Callable[[], None]:
    """Seed the global generators (and, in reproducible mode, ask for deterministic
    algorithms); returns what puts torch's settings back."""
    import torch

    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)

    def restore() -> None:
        if torch.are_deterministic_algorithms_enabled() != previous[0]:
            # Only when changed: the call takes up to seconds, and it runs on every stop.
            torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1:]

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
    return restore


# ----------------------------------------------------------------------------------------------
# Data


def check_data(cfg: FitConfig, dist: ddp.DistInfo, stop: threading.Event,
               notes: list[str]) -> Generator[FitEvent, None, DataSummary]:
    """Find and check every pair on rank 0 (statistics in parallel processes), for every rank;
    what the search notices is added to `notes`, said after the checks."""

    def work(progress) -> DataSummary:
        pairs = []
        if cfg.data:
            pairs += pairs_from_root(Path(cfg.data), notes)
        pairs += pairs_from_paths(cfg.pairs)
        pairs = with_level(pairs, cfg.level)
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        return check_pairs(pairs, cfg.class_names or None, cfg.stats_workers, cache, progress)

    box: tuple = ("ok", None)
    if dist.is_main:
        yield say(dist, "checking scan/mask pairs and computing per-scan statistics")
        # Checks can take minutes on real scans; nothing is fitted yet, so a stop needs no
        # saving (the statistics finished so far stay cached).
        try:
            box = ("ok", (yield from stats_with_progress(
                work, "bone-fit-checks", None if dist.enabled else stop,
                "fitting was stopped while the scans were being checked; nothing was fitted yet.")))
        except Exception as exc:  # noqa: BLE001 - every rank raises it below
            box = ("error", exc)
    box = ddp.broadcast_object(box, dist)
    if box[0] == "error":
        raise box[1]
    return box[1]


def choose_split(cfg: FitConfig, summary: DataSummary, checkpoint: dict | None, out: Path,
                 dist: ddp.DistInfo) -> Split:
    """The scans that fit and those that validate: the resumed run's, or a new split (saved
    in split.json)."""
    if checkpoint is not None:
        split = Split.from_dict(checkpoint["split"])
        missing = [i for i in split.train + split.val if i not in summary.by_id()]
        if missing:
            raise FitConfigError(f"scans {', '.join(missing)} of the run being resumed are "
                                 "missing: give the same data.")
        return split
    split = split_scans([i.pair.id for i in summary.infos], cfg.train_fraction, cfg.seed,
                        cfg.val_scans or None)
    if dist.is_main:
        write_split(out / runfiles.SPLIT, split)
    return split


def split_text(cfg: FitConfig, split: Split) -> str:
    return (f"split (seed {cfg.seed}): {len(split.train)} scans fit ({', '.join(split.train)}), "
            f"{len(split.val)} validate ({', '.join(split.val)})")


# ----------------------------------------------------------------------------------------------
# Easy mode and the checks of patches and batch


def adjust(cfg: FitConfig, summary: DataSummary, split: Split, devices: _Devices, multiple: int,
           notes: list[str]) -> FitConfig:
    """Easy mode: shrink patch and batch to what the data and memory allow (with notes)."""
    if not cfg.easy:
        return cfg
    infos = summary.by_id()
    side = min(min(infos[i].shape[1:]) for i in split.train + split.val)
    patch = cfg.patch
    if side < patch:
        patch = max(multiple, side // multiple * multiple)
        notes.append(f"Easy mode: patches shrink from {cfg.patch} to {patch} px because "
                     f"the smallest scan is {side} px across.")
    patches = sum(infos[i].shape[0] * min(cfg.patches_per_tile, patch_capacity(
        infos[i].shape[1], infos[i].shape[2], patch, cfg.max_overlap)) for i in split.train)
    batch = cfg.batch
    if patches < EASY_MIN_STEPS * batch:
        batch = max(EASY_MIN_BATCH, _pow2_floor(patches // EASY_MIN_STEPS))
        notes.append(f"Easy mode: batch shrinks from {cfg.batch} to {batch} patches "
                     f"because an epoch holds only {patches} training patches (at "
                     f"least {EASY_MIN_STEPS} updates per epoch).")
    free = free_memory(devices)
    per_patch = _BYTES_PER_PIXEL_FP32 * patch * patch // (2 if devices.cuda else 1)
    if free and batch * per_patch > free // 2:
        fitting = max(2, _pow2_floor(free // 2 // per_patch))
        if fitting < batch:
            notes.append(
                f"Easy mode: batch shrinks from {batch} to {fitting} patches to fit in the "
                f"{free / 2**30:.1f} GB of free {'GPU ' if devices.cuda else ''}memory.")
            batch = fitting
    return cfg.replace(patch=patch, batch=batch)


def free_memory(devices: _Devices) -> int:
    """Free bytes where the run fits: on its GPU, or available RAM."""
    import psutil
    import torch

    if devices.cuda:
        free, _ = torch.cuda.mem_get_info(devices.device)
        return int(free)
    return int(psutil.virtual_memory().available)


def check_batch_memory(cfg: FitConfig, devices: _Devices) -> None:
    """On the CPU, refuse a batch whose training memory cannot fit in the available RAM.

    The estimate is rough: _BYTES_PER_PIXEL_FP32 per patch pixel (per voxel in 3D), as
    measured for a U-Net with a ResNet-18 encoder (3D BasicUNet needs less). GPUs are
    not checked here; CUDA reports running out of memory itself.
    """
    if devices.cuda:
        return
    voxels = cfg.patch * cfg.patch * (cfg.patch_depth if Dims.parse(cfg.dims) is Dims.D3 else 1)
    per_patch = _BYTES_PER_PIXEL_FP32 * voxels
    free = free_memory(devices)
    if not free or cfg.batch * per_patch <= free:
        return
    size = f"{cfg.patch} px" + (f" x {cfg.patch_depth}-slice" if voxels > cfg.patch ** 2 else "")
    need = (f"about {cfg.batch * per_patch / 2**30:,.1f} GB of memory to fit {size} patches "
            f"on the CPU, but {free / 2**30:.1f} GB is available")
    largest = free // per_patch
    if largest < 1:
        raise FitConfigError(f"{{batch}} {cfg.batch} needs {need}: even one patch does not "
                             "fit, so use a smaller {patch}.", "patch")
    raise FitConfigError(f"{{batch}} {cfg.batch} needs {need}: use {{batch}} {largest} or less.",
                         "batch")


def check_patch_fits(cfg: FitConfig, summary: DataSummary, split: Split, multiple: int) -> None:
    """Refuse patches more than twice the smallest slice (or, in 3D, a patch depth more
    than twice the thinnest scan): tiles smaller than a patch are padded by mirroring,
    and beyond twice their size a patch would be mostly mirror images. `multiple`: the
    network's required multiple."""
    infos = summary.by_id()
    used = split.train + split.val
    scan = min(used, key=lambda i: min(infos[i].shape[1:]))
    side = min(infos[scan].shape[1:])
    largest = max(multiple, 2 * side // multiple * multiple)
    if cfg.patch > largest:
        height, width = infos[scan].shape[1:]
        raise FitConfigError(f"{{patch}} {cfg.patch} is more than twice the smallest slice "
                             f"({height}x{width} px, scan {scan}): use {{patch}} {largest} or "
                             f"less (a multiple of {multiple}).", "patch")
    if Dims.parse(cfg.dims) is Dims.D3:
        scan = min(used, key=lambda i: infos[i].shape[0])
        depth = infos[scan].shape[0]
        largest = max(multiple, 2 * depth // multiple * multiple)
        if cfg.patch_depth > largest:
            raise FitConfigError(f"{{patch_depth}} {cfg.patch_depth} is more than twice the "
                                 f"thinnest scan ({depth} slices, scan {scan}): use "
                                 f"{{patch_depth}} {largest} or less (a multiple of {multiple}).",
                                 "patch_depth")


def check_patch_geometry(cfg: FitConfig, multiple: int) -> None:
    """Refuse patch sizes (and 3D depths) that are not a multiple of what the network needs."""
    dims = Dims.parse(cfg.dims)
    if cfg.patch % multiple:
        lower = max(multiple, cfg.patch // multiple * multiple)
        raise FitConfigError(f"patch size {cfg.patch} is not a multiple of {multiple}, which "
                             f"the network needs: use {lower} or {lower + multiple}.")
    if dims is Dims.D3 and cfg.patch_depth % multiple:
        lower = max(multiple, cfg.patch_depth // multiple * multiple)
        raise FitConfigError(f"patch depth {cfg.patch_depth} is not a multiple of {multiple}, "
                             f"which the 3D network needs: use {lower} or {lower + multiple}.")
    if dims is Dims.D3 and cfg.patch == cfg.patch_depth == multiple:
        # After four poolings a 16x16x16 patch is one voxel, which instance norm cannot fit.
        raise FitConfigError(f"a {cfg.patch}x{cfg.patch}x{cfg.patch_depth} patch shrinks to a single "
                             f"voxel inside the 3D network: use {{patch}} {2 * multiple} or "
                             f"{{patch_depth}} {2 * multiple}.", "patch")
