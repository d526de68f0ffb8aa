"""One epoch of fitting: the network and what updates it, the train and validation steps, and the
accumulator that sums an epoch, saves where it stood when stopped, and closes it with its row.

An epoch is its training batches, then its validation batches, behind one loader
(data.loader.FitBatches). A stop is honoured before a training step (the batch is redone on
resume, the sums so far kept) or during validation (validation restarts; it changes nothing).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from bone_apps.core.data.loader import TRAIN, VAL, FitBatches, FitSampler, make_loader
from bone_apps.core.data.sampling import Dims, PatchBatches, PatchLayout, ScanSource
from bone_apps.core.fit.checkpoint import RunState, set_rng_states
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.plan import RunPlan
from bone_apps.core.fit.records import EpochEnd, StepProgress
from bone_apps.core.fit.slice_validation import score_run
from bone_apps.core.jobs import ddp
from bone_apps.core.jobs.monitor import ResourceMonitor
from bone_apps.core.predict.settings import InferenceSettings

_REPORT_EVERY_S = 0.5  # how often a step reads the running loss back from the GPU


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


# ----------------------------------------------------------------------------------------------
# The network and what updates it


@dataclass(frozen=True)
class Trainer:
    """The network on its device, the wrapper that runs it (DataParallel, DDP or itself), and
    the loss, optimizer, schedule and gradient scaler that update it."""

    model: Any
    net: Any
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    amp_dtype: Any  # torch.float16 / bfloat16 for mixed precision, None for fp32
    device: Any

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def make_trainer(plan: RunPlan, model) -> Trainer:
    """Move `model` to the plan's device, wrap it for several GPUs or ranks, and build what
    updates it as the config says."""
    import torch

    from bone_apps.core.model.losses import build_loss, build_optimizer, build_scheduler

    cfg, devices = plan.config, plan.devices
    device = devices.device
    model = model.to(device)
    if plan.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if devices.cuda else None)
    elif devices.ids:
        net = torch.nn.DataParallel(model, device_ids=devices.ids)
    else:
        net = model
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(cfg.optimizer, net.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, cfg.restart_epochs)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(plan.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16" and devices.cuda)
    return Trainer(model, net, loss_fn, optimizer, scheduler, scaler, amp_dtype, device)


def restore(trainer: Trainer, checkpoint: dict, cfg: FitConfig) -> RunState:
    """Load a checkpoint's states into `trainer` and the random generators; where the run stood."""
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_states(checkpoint["rng"])
    state = RunState.from_dict(checkpoint["state"])
    if cfg.epochs != checkpoint["config"]["epochs"]:
        _replan_schedule(trainer.scheduler, trainer.optimizer, cfg, state.epoch)
    return state


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


# ----------------------------------------------------------------------------------------------
# The batches


class Batches:
    """The run's training and validation patches behind one loader (its workers live as long
    as the loader: `close` ends them)."""

    def __init__(self, plan: RunPlan) -> None:
        cfg, summary, dist = plan.config, plan.summary, plan.dist
        infos = summary.by_id()

        def sources(ids):
            return [ScanSource(i, infos[i].pair.scan, infos[i].pair.mask, infos[i].shape,
                               infos[i].stats) for i in ids]

        layout = PatchLayout(plan.dims, cfg.patch, cfg.patches_per_tile, cfg.max_overlap,
                             cfg.context, cfg.patch_depth)
        per_rank = max(1, math.ceil(cfg.batch / dist.world))
        common = dict(layout=layout, norm=cfg.norm, batch=per_rank, seed=cfg.seed,
                      rank=dist.rank, world=dist.world, classes=summary.classes,
                      label_values=summary.label_map.values)
        self.train = PatchBatches(sources(plan.split.train), train=True,
                                  augment=cfg.augmentation if cfg.augment else None, **common)
        self.val = PatchBatches(sources(plan.split.val), train=False, **common)
        dataset = FitBatches(self.train, self.val)
        self.sampler = FitSampler(dataset)
        self.loader = make_loader(dataset, self.sampler, cfg.workers, cfg.seed, plan.devices.cuda)
        self.workers = self.loader.num_workers

    def of_epoch(self, state: RunState):
        """The loader over `state`'s epoch from where it stands."""
        self.sampler.set_epoch(state.epoch, VAL if state.phase == "val" else TRAIN, state.batch)
        return self.loader

    def steps(self, epoch: int) -> dict[int, int]:
        return {TRAIN: self.train.batches_per_epoch(epoch), VAL: self.val.batches_per_epoch()}

    def describe(self, plan: RunPlan) -> str:
        cfg = plan.config
        return (f"{plan.dims.value} patches of {cfg.patch} px"
                + (f" x {cfg.patch_depth} slices" if plan.dims is Dims.D3 else "")
                + f": {self.train.tiles} training tiles, {self.train.patches_per_epoch} training and "
                f"{self.val.patches_per_epoch} validation patches per epoch, batch {cfg.batch}"
                f"{f' ({self.train.batch} per process)' if plan.dist.enabled else ''}; "
                f"device {plan.devices.describe(plan.dist)}, precision {plan.precision}, "
                f"{self.workers} loader workers")

    def close(self) -> None:
        self.loader = None  # ends the worker processes


# ----------------------------------------------------------------------------------------------
# Steps


def train_step(t: Trainer, image, target):
    """One update on a batch; (loss, logits), detached."""
    import torch

    t.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None):
        logits = t.net(image)
    loss = t.loss_fn(logits.float(), target)
    t.scaler.scale(loss).backward()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    return loss.detach(), logits.detach()


def val_step(t: Trainer, image, target, distributed: bool):
    """The loss and logits of a validation batch (the network left in eval mode)."""
    import torch

    if t.net.training:
        t.net.eval()
    with torch.no_grad(), torch.autocast(t.device.type, dtype=t.amp_dtype,
                                         enabled=t.amp_dtype is not None):
        # Each rank validates its share alone: DDP's forward would wait for the others.
        logits = t.model(image) if distributed else t.net(image)
        loss = t.loss_fn(logits.float(), target)
    return loss, logits


def stop_requested(dist: ddp.DistInfo, stop: threading.Event, device) -> bool:
    """Whether to stop now; under DDP every rank answers the same (a stop on any rank)."""
    if dist.enabled:
        return ddp.any_rank(stop.is_set(), device)
    return stop.is_set()


# ----------------------------------------------------------------------------------------------
# The accumulator


class EpochTally:
    """The running sums of one epoch: losses (on the device, read back rarely), patches,
    confusion matrices and seconds; it goes on from a checkpoint's partial sums, and writes
    its own into the run state when the epoch is stopped.

    `step_seconds` counts the run's time inside train and validation steps (all epochs).
    """

    def __init__(self, state: RunState, metrics: tuple, device, step_seconds: float) -> None:
        import torch

        partial = state.partial or {}
        self.device = device
        self.loss = {key: torch.zeros((), dtype=torch.float64, device=device)
                     for key in ("train", "val")}
        self.loss["train"] += float(partial.get("train_loss_sum", 0.0))
        self.count = {"train": int(partial.get("train_n", 0)), "val": 0}
        self.metric = dict(zip(("train", "val"), metrics))
        for metric in metrics:
            metric.reset()
        if "train_confmat" in partial:
            self.metric["train"].confmat = partial["train_confmat"].to(device)
        self.offset = float(partial.get("epoch_seconds", 0.0))  # before the resume
        self.started = time.perf_counter()
        self.step_seconds = step_seconds

    def add(self, key: str, loss, logits, target) -> None:
        n = target.shape[0]
        self.loss[key] += loss.double() * n
        self.metric[key].update(logits.argmax(1), target)
        self.count[key] += n

    def running(self, key: str) -> float:
        """The phase's mean loss so far (reads the device)."""
        return float(self.loss[key].item()) / max(1, self.count[key])

    @property
    def epoch_seconds(self) -> float:
        return self.offset + time.perf_counter() - self.started

    def stop_at(self, state: RunState, phase: int, batch: int) -> None:
        """Record in `state` where the stopped epoch stands and its sums so far."""
        state.phase = "train" if phase == TRAIN else "val"
        state.batch = batch
        state.partial = {
            "train_loss_sum": float(self.loss["train"].item()), "train_n": self.count["train"],
            "train_confmat": self.metric["train"].confmat.detach().cpu().clone(),
            "epoch_seconds": self.epoch_seconds}
        state.fit_seconds += time.perf_counter() - self.started

    def losses(self) -> tuple[float, float]:
        """Mean train and validation loss over every rank."""
        totals = ddp.all_reduce_sum([float(self.loss["train"].item()), self.count["train"],
                                     float(self.loss["val"].item()), self.count["val"]], self.device)
        return totals[0] / max(1, totals[1]), totals[2] / max(1, totals[3])


def make_metrics(classes: int, device) -> tuple:
    """Per-class IoU accumulators for the training and validation phases."""
    from torchmetrics.classification import MulticlassJaccardIndex

    return tuple(MulticlassJaccardIndex(classes, average="none", validate_args=False,
                                        zero_division=float("nan")).to(device) for _ in range(2))


def run_epoch(plan: RunPlan, t: Trainer, batches: Batches, state: RunState, tally: EpochTally,
              stop: threading.Event) -> Generator[StepProgress, None, tuple[int, int] | None]:
    """Fit and validate `state`'s epoch from where it stands, yielding a record per step.

    Returns None when the epoch's batches are done, or (phase, batch) where a stop ended it.
    """
    import torch

    epoch, epochs, lr, distributed = state.epoch, plan.config.epochs, t.lr, plan.dist.enabled
    loader = batches.of_epoch(state)
    steps = batches.steps(epoch)
    t.net.train()
    last_report, running = 0.0, None
    phase_now = VAL if state.phase == "val" else TRAIN
    for phase, b, image, mask in loader:
        phase, b = int(phase), int(b)
        if phase != phase_now:
            phase_now, running, last_report = phase, None, 0.0
        if phase == TRAIN:
            if stop_requested(plan.dist, stop, t.device):
                return TRAIN, b
        elif not distributed and stop.is_set():
            return VAL, 0  # validation restarts; it changes nothing
        image = image.to(t.device, non_blocking=True)
        target = mask.to(t.device, non_blocking=True).long()
        t0 = time.perf_counter()
        if phase == TRAIN:
            loss, logits = train_step(t, image, target)
            tally.step_seconds += time.perf_counter() - t0
            with torch.no_grad():
                tally.add("train", loss, logits, target)
            key = "train"
        else:
            loss, logits = val_step(t, image, target, distributed)
            tally.step_seconds += time.perf_counter() - t0
            tally.add("val", loss, logits, target)
            key = "val"
        now = time.perf_counter()
        if not plan.devices.cuda or now - last_report >= _REPORT_EVERY_S or b + 1 == steps[phase]:
            running = tally.running(key)
            last_report = now
        yield StepProgress(epoch + 1, epochs, key, b + 1, steps[phase], running, lr)
    return None


def close_epoch(plan: RunPlan, t: Trainer, tally: EpochTally, state: RunState,
                monitor: ResourceMonitor, lr: float) -> EpochEnd:
    """End a finished epoch: gather its numbers from every rank, score whole validation slices
    (rank 0), step the schedule, add its row to `state` and move `state` to the next epoch."""
    import torch

    t.net.train()
    train_loss, val_loss = tally.losses()
    train_per_class = tally.metric["train"].compute().tolist()
    val_per_class = tally.metric["val"].compute().tolist()
    train_iou, val_iou = _nanmean(train_per_class), _nanmean(val_per_class)
    val_patch_iou = val_iou
    if plan.config.val_slices >= 0 and plan.dist.is_main:
        # What the user will get: whole validation slices through the prediction inferer.
        scores = score_run(plan, t.model, [InferenceSettings()])[0]
        val_per_class, val_iou = scores.per_class_iou, scores.mean_iou
    t.scheduler.step()
    epoch_seconds = tally.epoch_seconds
    state.fit_seconds += time.perf_counter() - tally.started
    improved = math.isfinite(val_iou) and (state.best_iou is None or val_iou > state.best_iou)
    per_class = {name: (None if not math.isfinite(v) else v)
                 for name, v in zip(plan.class_names, val_per_class)}
    resources = monitor.snapshot()
    if plan.devices.cuda:
        resources["torch_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(t.device))
        torch.cuda.reset_peak_memory_stats(t.device)
    epoch = state.epoch
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "val_loss": val_loss,
           "train_iou": train_iou, "val_iou": val_iou, "val_patch_iou": val_patch_iou,
           **{f"val_iou_{name}": v for name, v in per_class.items()},
           "epoch_time_s": epoch_seconds, "fit_time_s": state.fit_seconds,
           "step_time_s": tally.step_seconds,
           "peak_ram_mb": resources["peak_rss_bytes"] / 2**20,
           "gpu_util_percent": resources["mean_gpu_utilization"],
           "peak_vram_mb": (None if resources["peak_vram_bytes"] is None
                            else resources["peak_vram_bytes"] / 2**20)}
    state.history.append(row)
    if improved:
        state.best_iou, state.best_epoch = val_iou, epoch + 1
    state.epoch, state.phase, state.batch, state.partial = epoch + 1, "train", 0, {}
    return EpochEnd(epoch + 1, plan.config.epochs, lr, train_loss, val_loss, train_iou, val_iou,
                    per_class, epoch_seconds, improved, resources, row)


def epoch_line(end: EpochEnd) -> str:
    """The epoch's line in fit.log."""
    row, per_class, resources = end.row, end.val_iou_per_class, end.resources
    patch_iou, val_iou = row["val_patch_iou"], end.val_iou
    return (f"epoch {end.epoch}/{end.epochs}: lr {end.lr:.3g}, loss {end.train_loss:.4f} / "
            f"{end.val_loss:.4f}, IoU {end.train_iou:.4f} / {val_iou:.4f} (train / val"
            + (f" on whole slices; {patch_iou:.4f} on patches, gap "
               f"{patch_iou - val_iou:+.4f}" if patch_iou != val_iou else "") + "), "
            + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} absent"
                        for k, v in per_class.items())
            + f"; {end.epoch_seconds:.1f} s, peak RAM {resources['peak_rss_bytes'] / 2**30:.2f} GB"
            + (" (best so far, saved)" if end.improved else ""))
