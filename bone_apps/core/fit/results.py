"""What a run leaves in its folder: the best model's weights (with the description of the model,
the fit config, the split and the metrics), the resumable checkpoint, the window check that
records how to predict with the model, and summary.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bone_apps.core.fit import runfiles
from bone_apps.core.fit.checkpoint import RunState, rng_states, save_checkpoint
from bone_apps.core.fit.epoch import Trainer
from bone_apps.core.fit.plan import RunPlan, fit_logger
from bone_apps.core.fit.records import FitResult
from bone_apps.core.fit.slice_validation import MIN_AGREEMENT, score_run
from bone_apps.core.model.weights import (
    load_weights,
    save_weights,
    software_version,
    unwrap_model,
    weights_meta,
)
from bone_apps.core.predict.settings import InferenceSettings


def save_model(plan: RunPlan, model, row: dict, per_class: dict) -> None:
    """Write the model of the epoch `row` describes (model.pth, weights format /2: the model's
    description, the fit config, the split and the metrics)."""
    metrics = {"val_iou": row["val_iou"], "val_loss": row["val_loss"], "train_iou": row["train_iou"],
               "train_loss": row["train_loss"], "val_iou_per_class": per_class}
    meta = weights_meta(plan.spec, plan.config.to_dict(), plan.split.to_dict(), metrics,
                        best_epoch=row["epoch"])
    save_weights(plan.out / runfiles.MODEL, model, runfiles.finite(meta))


def save_run_checkpoint(plan: RunPlan, t: Trainer, state: RunState) -> None:
    """Write checkpoint.pth: everything a resume needs to go on as if never stopped."""
    summary = plan.summary
    save_checkpoint(plan.out / runfiles.CHECKPOINT, {
        "config": plan.config.to_dict(), "requested_config": plan.requested.to_dict(),
        "model": {k: v.detach().cpu() for k, v in unwrap_model(t.model).state_dict().items()},
        "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(), "rng": rng_states(), "state": state.to_dict(),
        "split": plan.split.to_dict(), "classes": summary.classes,
        "class_names": list(summary.class_names), "version": software_version()})


def choose_inference(plan: RunPlan, model) -> dict | None:
    """Check the best model's labels against window size; record in its weights the
    prediction settings that reproduce its slice-level validation (patch-sized windows
    when larger ones change its labels)."""
    cfg = plan.config
    path = plan.out / runfiles.MODEL
    if not path.exists() or cfg.val_slices < 0 or not plan.dist.is_main:
        return None
    state, meta = load_weights(path)
    model.load_state_dict(state)
    default, patch = score_run(plan, model, [InferenceSettings(), InferenceSettings.patch_sized(cfg.patch)])
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
    fit_logger().info(text)
    return inference


@dataclass(frozen=True)
class RunFacts:
    """What summary.json tells of a run besides its epochs: seconds, peaks, size, start."""

    started: float  # time.perf_counter() when fit began
    setup_s: float
    step_s: float
    peaks: dict
    mean_gpu_utilization: float | None
    complexity: dict
    patches_per_epoch: int


def finish(plan: RunPlan, model, state: RunState, stopped: bool, facts: RunFacts) -> FitResult:
    """Write summary.json (and, for a completed run, the window check into the weights) and
    say how the run ended."""
    cfg, out, summary = plan.config, plan.out, plan.summary
    status = "stopped" if stopped else "completed"
    best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
    wall = time.perf_counter() - facts.started
    summary_data = {
        "status": status, "epochs_done": state.epoch, "epochs": cfg.epochs,
        "best_epoch": state.best_epoch, "best_val_iou": state.best_iou,
        "best_metrics": best_row, "last_epoch": state.history[-1] if state.history else None,
        "times": {"setup_s": facts.setup_s, "fit_loop_s": state.fit_seconds,
                  "step_s": facts.step_s, "wall_s": wall},
        "peaks": {**facts.peaks, "mean_gpu_utilization": facts.mean_gpu_utilization},
        "complexity": facts.complexity, "init": plan.init_note,
        "device": plan.devices.describe(plan.dist), "world_size": plan.dist.world,
        "classes": list(summary.class_names), "split": plan.split.to_dict(),
        "label_values": list(summary.label_map.values),
        "patches_per_epoch": facts.patches_per_epoch, "version": software_version(),
    }
    model_path = out / runfiles.MODEL
    if not stopped:
        summary_data["inference"] = choose_inference(plan, model)
        if best_row is not None and best_row.get("val_patch_iou") is not None:
            summary_data["val_patch_slice_gap"] = best_row["val_patch_iou"] - best_row["val_iou"]
    hint = f"bone fit --resume {out}" if stopped else None
    if plan.dist.is_main:
        runfiles.write_json(out / runfiles.SUMMARY, summary_data)
        if stopped:
            fit_logger().info(f"stopped at epoch {state.epoch + 1}, {state.phase} batch "
                              f"{state.batch}; continue with: {hint}")
        else:
            fit_logger().info(f"done: best validation IoU {state.best_iou} at epoch "
                              f"{state.best_epoch}; {wall:.1f} s in all")
    return FitResult(
        out=out, status=status, epochs_done=state.epoch, best_epoch=state.best_epoch,
        best_val_iou=state.best_iou, model_path=model_path if model_path.exists() else None,
        checkpoint_path=out / runfiles.CHECKPOINT, summary=summary_data, resume_hint=hint)
