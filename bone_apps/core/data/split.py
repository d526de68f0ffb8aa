"""Scan-level training/validation split: whole scans go to one side, so no slice leaks.

The paper's DLFit splits whole scans (§2.3.1) because slices of one scan are nearly
identical neighbours; a slice-level split would validate on near-copies of training data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.errors import FitConfigError
from bone_apps.core.io.outputs import write_atomic


@dataclass(frozen=True)
class Split:
    """Scan ids on each side, in the order fitting uses them."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int
    train_fraction: float | None  # None when the validation scans were named explicitly

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "seed": self.seed,
                "train_fraction": self.train_fraction,
                "actual_train_fraction": len(self.train) / (len(self.train) + len(self.val))}

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        return cls(tuple(data["train"]), tuple(data["val"]), int(data["seed"]),
                   data.get("train_fraction"))


def split_scans(
    ids: Sequence[str], train_fraction: float = 0.8, seed: int = 42,
    val_ids: Sequence[str] | None = None,
) -> Split:
    """Shuffle whole scans with `seed` and split them as close to `train_fraction` as possible.

    At least one scan goes to each side. With `val_ids`, exactly those scans validate and
    the rest fit (the fraction is then ignored).

    Raises:
        FitConfigError: fewer than two scans, duplicate ids, a fraction outside (0, 1), or
            `val_ids` naming unknown scans or all of them.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise FitConfigError("two scans share an id: give each scan a unique folder or file name.")
    if len(ids) < 2:
        raise FitConfigError(f"fitting needs at least two scans (one to fit, one to validate); "
                             f"got {len(ids)}: add another scan/mask pair.")
    if val_ids:
        unknown = [v for v in val_ids if v not in ids]
        if unknown:
            raise FitConfigError(f"{{val_scans}} names {', '.join(unknown)}, which are not among the "
                                 f"scans ({', '.join(ids)}): use those names.", "val_scans")
        val = [i for i in ids if i in set(val_ids)]
        train = [i for i in ids if i not in set(val_ids)]
        if not train:
            raise FitConfigError("{val_scans} names every scan: leave at least one for fitting.", "val_scans")
        return Split(tuple(train), tuple(val), seed, None)
    if not 0.0 < train_fraction < 1.0:
        raise FitConfigError(f"train fraction {train_fraction} must be between 0 and 1 "
                             "(e.g. 0.8).")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(np.clip(round(train_fraction * len(ids)), 1, len(ids) - 1))
    shuffled = [ids[i] for i in order]
    return Split(tuple(shuffled[:n_train]), tuple(shuffled[n_train:]), seed, train_fraction)


def write_split(path: Path, split: Split) -> Path:
    """Write split.json atomically."""
    return write_atomic(Path(path), json.dumps(split.to_dict(), indent=2) + "\n")


def read_split(path: Path) -> Split:
    return Split.from_dict(json.loads(Path(path).read_text()))
