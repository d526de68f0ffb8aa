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

`fit` reads top to bottom: setup (core.fit.prepare, core.fit.network) makes one frozen
RunPlan; each epoch runs its steps into an EpochTally (core.fit.epoch); the files a run
leaves are written by core.fit.results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from bone_apps.core.fit import runfiles
from bone_apps.core.fit.checkpoint import RunState
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.epoch import (
    Batches,
    EpochTally,
    close_epoch,
    epoch_line,
    make_metrics,
    make_trainer,
    restore,
    run_epoch,
    stop_requested,
)
from bone_apps.core.fit.network import build_network, complexity
from bone_apps.core.fit.plan import RunPlan, _Devices, fit_logger, on_main, say
from bone_apps.core.fit.prepare import (
    adjust,
    check_batch_memory,
    check_data,
    check_patch_fits,
    check_patch_geometry,
    choose_split,
    load_resumable,
    resumed,
    set_determinism,
    split_text,
)
from bone_apps.core.fit.records import FitEvent, FitFinished, FitResult
from bone_apps.core.fit.results import RunFacts, finish, save_model, save_run_checkpoint
from bone_apps.core.jobs import ddp
from bone_apps.core.jobs.monitor import ResourceMonitor
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.model.weights import software_version


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
            change are refused (FitConfig's rule, config.resumed_config); a larger `epochs`
            fits the extra epochs, the cosine schedule planned again over the new total.
        overwrite: replace an earlier run in config.out.
        stop: set it to stop at the next safe point (between steps); the state is saved
            and the run can be resumed.

    Returns (as the generator's value, and in FitFinished): the FitResult.

    Raises:
        BoneAppsError: bad options or data (every data problem listed at once), an output
            folder holding another run, unavailable ImageNet weights, ...
    """
    started = time.perf_counter()
    stop = stop or threading.Event()
    dist = ddp.DistInfo.from_env()
    out = Path(config.out).expanduser()
    runfiles.open_fit_log(None)
    monitor = ResourceMonitor()
    # Clean-up runs in reverse: loader workers, monitor, torch settings, the log, then the
    # output folder (a run without a checkpoint is undone), then the process group.
    with ExitStack() as scope:
        if dist.enabled:
            scope.callback(ddp.destroy_process_group)
        config.validate()
        devices = _Devices(config.device, dist)
        if devices.cuda:
            import torch

            torch.cuda.set_device(devices.device)  # NCCL binds each rank to its GPU
        ddp.init_process_group(dist, devices.cuda)
        if not resume and not config.easy:  # Easy mode shrinks the batch instead
            check_batch_memory(config, devices)  # before anything is written
        monitor.start()
        scope.callback(monitor.stop)

        def claim_out() -> dict | None:
            scope.callback(runfiles.prepare_out(out, resume, overwrite).release)
            return load_resumable(out, config) if resume else None

        checkpoint = on_main(dist, claim_out)
        log = runfiles.open_fit_log(out / runfiles.FIT_LOG if dist.is_main else None)
        scope.callback(runfiles.close_fit_log, log)
        cfg, requested = config, config  # as fitted, and as asked before Easy mode
        if checkpoint is not None:
            cfg, requested = resumed(config, checkpoint, out)
            at, planned = checkpoint["state"], checkpoint["config"]["epochs"]
            yield say(dist, f"resuming {out} at epoch {at['epoch'] + 1} ({at['phase']}, batch "
                            f"{at['batch']})" + (f", now {cfg.epochs} epochs in all (was {planned})"
                                                 if cfg.epochs != planned else ""))
        else:
            yield say(dist, f"bone_apps {software_version()}: fitting into {out}")
        scope.callback(set_determinism(cfg))

        # Setup: data, split, network, Easy mode; then the plan is fixed.
        notes: list[str] = []
        summary = yield from check_data(cfg, dist, stop, notes)
        yield say(dist, summary.text())
        split = choose_split(cfg, summary, checkpoint, out, dist)
        yield say(dist, split_text(cfg, split))
        network = build_network(cfg, summary, resuming=checkpoint is not None)
        if checkpoint is None:
            cfg = on_main(dist, partial(adjust, cfg, summary, split, devices, network.multiple, notes))
        for note in notes:
            yield say(dist, note, "note")
        check_patch_geometry(cfg, network.multiple)
        check_patch_fits(cfg, summary, split, network.multiple)
        yield say(dist, network.init_note)
        plan = RunPlan(cfg, requested, out, dist, devices, summary, split, network.arch,
                       network.in_channels, network.multiple, network.init_note)
        if dist.is_main and (checkpoint is None or cfg.epochs != checkpoint["config"]["epochs"]):
            cfg.save(out / runfiles.CONFIG)  # a resumed run may have a new epoch total
        counts = yield from complexity(plan, network.model)

        trainer = make_trainer(plan, network.model)
        state = RunState() if checkpoint is None else restore(trainer, checkpoint, cfg)
        del checkpoint, network  # the states are loaded; the model lives in the trainer
        metrics = make_metrics(summary.classes, trainer.device)
        batches = Batches(plan)
        scope.callback(batches.close)
        yield say(dist, batches.describe(plan))
        setup_s = time.perf_counter() - started

        # The epochs.
        stopped, step_s = False, 0.0
        peaks: dict = {"peak_ram_bytes": 0, "peak_vram_bytes": None}
        while state.epoch < cfg.epochs:
            monitor.reset_peaks()
            lr = trainer.lr
            tally = EpochTally(state, metrics, trainer.device, step_s)
            stopped_at = yield from run_epoch(plan, trainer, batches, state, tally, stop)
            step_s = tally.step_seconds
            if stopped_at is not None:
                tally.stop_at(state, *stopped_at)
                stopped = True
                break
            end = close_epoch(plan, trainer, tally, state, monitor, lr)
            peaks["peak_ram_bytes"] = max(peaks["peak_ram_bytes"], end.resources["peak_rss_bytes"])
            if end.resources["peak_vram_bytes"] is not None:
                peaks["peak_vram_bytes"] = max(peaks["peak_vram_bytes"] or 0,
                                               end.resources["peak_vram_bytes"])
            if dist.is_main:
                if end.improved:
                    save_model(plan, trainer.model, end.row, end.val_iou_per_class)
                save_run_checkpoint(plan, trainer, state)
                runfiles.write_log_csv(out / runfiles.LOG_CSV, state.history)
                fit_logger().info(epoch_line(end))
            yield end
            if stop_requested(dist, stop, trainer.device):
                stopped = state.epoch < cfg.epochs
                break

        # The end: a stopped run saves where it stands; a completed one checks its windows.
        if stopped and dist.is_main:
            save_run_checkpoint(plan, trainer, state)
        batches.close()
        facts = RunFacts(started, setup_s, step_s, peaks, monitor.mean_gpu_utilization, counts,
                         batches.train.patches_per_epoch)
        result = finish(plan, trainer.model, state, stopped, facts)
        yield FitFinished(result)
    return result


def run_fit(
    config: FitConfig, on_event: Callable[[FitEvent], None] | None = None, **kwargs,
) -> FitResult:
    """Drive `fit` to the end, passing each record to `on_event`; returns the result."""
    return run_to_end(fit(config, **kwargs), on_event)


__all__ = ["fit", "run_fit"]
