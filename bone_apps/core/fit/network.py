"""The network a run fits: built from the config (random, ImageNet or transferred weights) and,
once, its size (parameters, and FLOPs per batch when profiling)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bone_apps.core.data.pairs import DataSummary
from bone_apps.core.data.sampling import Dims
from bone_apps.core.errors import FitConfigError, PretrainedUnavailableError
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.plan import RunPlan, fit_logger, say
from bone_apps.core.fit.records import FitEvent
from bone_apps.core.model.models import build_model, canonical_architecture, check_encoder, required_multiple
from bone_apps.core.model.weights import load_weights


@dataclass(frozen=True)
class Network:
    """A freshly built network and what the run plan records of it."""

    model: Any
    arch: str  # the registry's spelling
    in_channels: int
    multiple: int  # models.required_multiple: inputs must be a multiple of it
    init_note: str  # where the initial weights come from


def build_network(cfg: FitConfig, summary: DataSummary, resuming: bool) -> Network:
    """Build the network `cfg` describes for the data's classes, with its initial weights
    (a resumed run's come from its checkpoint later)."""
    import torch

    dims = Dims.parse(cfg.dims)
    arch = canonical_architecture(cfg.arch, dims.value)
    check_encoder(cfg.encoder, dims.value)
    in_channels = 2 * cfg.context + 1 if dims is Dims.D25 else 1
    init = cfg.init
    weights = None
    if not resuming and (init == "imagenet" or (init == "auto" and dims is not Dims.D3)):
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
        if resuming:
            note = "initial weights: from the checkpoint"
        elif init in ("random", "auto"):
            note = "initial weights: random" + (" (no ImageNet weights for 3D networks)"
                                                if init == "auto" else "")
        else:
            note = _transfer(model, Path(init), dims.value, arch, in_channels, cfg, summary)
    return Network(model, arch, in_channels, required_multiple(model, dims.value), note)


def _transfer(model, path: Path, dims: str, arch: str, in_channels: int, cfg: FitConfig,
              summary: DataSummary) -> str:
    """Load a weights file of this suite: all weights, or all but a new head."""
    state, meta = load_weights(path)
    mismatch = [f"{k} {meta.get(k)} (this run: {v})" for k, v in (
        ("dims", dims), ("arch", arch), ("encoder", cfg.encoder),
        ("in_channels", in_channels)) if str(meta.get(k)).lower() != str(v).lower()]
    if mismatch:
        raise FitConfigError(f"{path} does not fit this model: {'; '.join(mismatch)}. Choose "
                             "matching {dims}/{arch}/{encoder}/{context} or another file.", "init")
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


def complexity(plan: RunPlan, model) -> Generator[FitEvent, None, dict]:
    """Parameters and FLOPs of one batch (fvcore, when profiling), once, said on rank 0."""
    import torch

    cfg = plan.config
    counts: dict = {"parameters": sum(p.numel() for p in model.parameters()), "flops_per_batch": None}
    if not plan.dist.is_main:
        return counts
    text = f"parameters: {counts['parameters']:,}"
    if cfg.profile:
        try:
            import warnings

            with warnings.catch_warnings():
                # fvcore scripts a function at import, which this torch calls deprecated.
                warnings.simplefilter("ignore", FutureWarning)
                from fvcore.nn import FlopCountAnalysis, parameter_count_table

            fit_logger().info("parameters by module:\n" + parameter_count_table(model, max_depth=2))
            was_training = model.training
            model.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer chatter about this one trace
                analysis = FlopCountAnalysis(model, torch.zeros(plan.input_shape(1)))
                analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
                per_patch = int(analysis.total())
            model.train(was_training)
            counts["flops_per_batch"] = per_patch * cfg.batch
            text += (f"; {per_patch * cfg.batch / 1e9:.2f} GFLOPs per batch of {cfg.batch} "
                     "(fvcore: one multiply-add counts as one)")
        except Exception as exc:  # noqa: BLE001 - tracing is optional; fitting goes on
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            text += f"; FLOPs not counted: fvcore could not trace {plan.arch} ({reason})"
    yield say(plan.dist, text)
    return counts
