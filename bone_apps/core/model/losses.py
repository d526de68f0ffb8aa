"""Loss functions, optimizers and learning-rate schedules of fitting, as registries.

Each registry maps a name to a small factory; a miss lists the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bone_apps.core.errors import FitConfigError

if TYPE_CHECKING:
    import torch

# Focal Tversky (Abraham & Khan 2019): alpha weighs false positives, beta false negatives;
# the loss is (1 - Tversky index) ** gamma with gamma = 1 / (4/3).
_TVERSKY_ALPHA, _TVERSKY_BETA, _TVERSKY_GAMMA = 0.3, 0.7, 0.75
SGD_MOMENTUM = 0.9


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name.strip().lower()]
    except KeyError:
        raise FitConfigError(f"{what} {name!r} is unknown: use one of "
                             f"{', '.join(registry)}.") from None


def _jaccard() -> Callable:
    from segmentation_models_pytorch.losses import JaccardLoss

    return JaccardLoss(mode="multiclass", from_logits=True)


def _dice() -> Callable:
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="multiclass", from_logits=True)


def _focal_tversky() -> Callable:
    from segmentation_models_pytorch.losses import TverskyLoss

    return TverskyLoss(mode="multiclass", from_logits=True, alpha=_TVERSKY_ALPHA,
                       beta=_TVERSKY_BETA, gamma=_TVERSKY_GAMMA)


def _ce_jaccard() -> Callable:
    import torch
    from segmentation_models_pytorch.losses import JaccardLoss

    jaccard = JaccardLoss(mode="multiclass", from_logits=True)
    cross_entropy = torch.nn.CrossEntropyLoss()

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target) + jaccard(logits, target)

    return loss


LOSSES: dict[str, Callable[[], Callable]] = {
    "jaccard": _jaccard,
    "dice": _dice,
    "focal-tversky": _focal_tversky,
    "ce+jaccard": _ce_jaccard,
}


def build_loss(name: str) -> Callable:
    """A loss `(logits (B, C, ...), target (B, ...) int64) -> scalar` by name."""
    return _lookup(LOSSES, name, "loss")()


OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, lr, wd: _torch_optim().Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: _torch_optim().AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: _torch_optim().SGD(params, lr=lr, momentum=SGD_MOMENTUM,
                                                     weight_decay=wd),
}
# AdamW is meant to be used with decoupled weight decay; 0.01 is PyTorch's default.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.01, "sgd": 0.0}


def _torch_optim():
    import torch

    return torch.optim


def build_optimizer(name: str, params, lr: float, weight_decay: float | None = None):
    """Adam, AdamW or SGD with momentum 0.9; weight decay defaults per optimizer."""
    factory = _lookup(OPTIMIZERS, name, "optimizer")
    wd = DEFAULT_WEIGHT_DECAY[name.strip().lower()] if weight_decay is None else weight_decay
    return factory(params, lr, wd)


SCHEDULERS = ("cosine", "cosine-restarts", "constant")


def build_scheduler(name: str, optimizer, epochs: int, restart_epochs: int):
    """An epoch-stepped schedule: a single cosine cycle over all epochs (the paper's), cosine
    with warm restarts every `restart_epochs` epochs, or a constant rate."""
    import torch

    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise FitConfigError(f"scheduler {name!r} is unknown: use one of {', '.join(SCHEDULERS)}.")
    sched = torch.optim.lr_scheduler
    if key == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if key == "cosine-restarts":
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, restart_epochs))
    return sched.LambdaLR(optimizer, lambda _: 1.0)


def check_names(loss: str, optimizer: str, scheduler: str) -> None:
    """Raise FitConfigError for an unknown loss, optimizer or scheduler name."""
    _lookup(LOSSES, loss, "loss")
    _lookup(OPTIMIZERS, optimizer, "optimizer")
    if scheduler.strip().lower() not in SCHEDULERS:
        raise FitConfigError(f"scheduler {scheduler!r} is unknown: use one of "
                             f"{', '.join(SCHEDULERS)}.")

