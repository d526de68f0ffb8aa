"""The resumable checkpoint of a fitting run (checkpoint.pth).

It holds the model, optimizer, scheduler and gradient-scaler states, every random-number
generator's state, where the run stands (epoch, phase, next batch, partial sums of an
interrupted epoch), the history of finished epochs, and the configuration. Random states are
stored as plain numbers and tensors so the file loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bone_apps.core.errors import WeightsError
from bone_apps.core.io.outputs import atomic_target

CHECKPOINT_FORMAT = "bone_apps.checkpoint/1"


@dataclass
class RunState:
    """Where a run stands.

    epoch: the epoch in progress (0-based); equals the epoch count when the run is complete.
    phase: "train" or "val" within that epoch; batch: the next batch of that phase.
    partial: running sums of the epoch in progress (loss sum, patches, confusion matrix).
    """

    epoch: int = 0
    phase: str = "train"
    batch: int = 0
    best_iou: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)
    fit_seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> RunState:
        return cls(**data)


def rng_states() -> dict:
    """Python, NumPy, torch (and CUDA) global generator states as weights_only-safe data."""
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import torch

    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, payload: dict) -> Path:
    """Write a checkpoint dict atomically (temporary file, then rename)."""
    import torch

    path = Path(path)
    with atomic_target(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely; WeightsError (one sentence) when it is not one of ours."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: there is no run to resume in {path.parent}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise WeightsError(f"{path} is not a readable checkpoint ({str(exc).splitlines()[0]}): "
                           "start the run again with --overwrite.") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a bone_apps checkpoint: start the run again with "
                           "--overwrite.")
    return payload
