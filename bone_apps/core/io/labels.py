"""Mask label values and class names: what a user's masks hold, and which classes that makes.

Networks need classes 0..N-1, but other tools save masks with their own values: 0/255 binary
masks, 0/128/255, or 1/2/3. The sorted values found in all masks become classes 0..N-1 (so 0
stays background when present, and with 1/2/3 the value 1 becomes class 0), the mapping is
kept in the weights (meta["label_values"]) and predictions are written back with the user's
own values, so a predicted mask compares directly with the user's masks.

A mask with more than MAX_LABEL_VALUES distinct values is refused: it is almost certainly a
scan chosen by mistake, and its values must never decide how much memory is allocated (a
16-bit scan would make 65536 classes).

No torch and no Qt here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bone_apps.core.errors import BoneAppsError, LabelError

MAX_LABEL_VALUES = 64  # distinct values a label mask may hold
_VALUE_LIMIT = 1 << 16  # masks are uint8 or uint16


def value_preview(values: Sequence[int], head: int = 3) -> str:
    """A short list of values: all of them when few, else "0, 1, 2, ... 65535"."""
    values = [int(v) for v in values]
    if len(values) <= head + 2:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:head]))}, ... {values[-1]}"


def too_many_values(where: object, values: Sequence[int], complete: bool = True,
                    verb: str = "holds") -> str | None:
    """The problem (no final full stop) when `where` holds too many values to be a label mask.

    Args:
        where: the mask's path (or a description such as "prediction PATH").
        values: the distinct values found, sorted.
        complete: False when counting stopped early (the count is a lower bound).
    """
    if len(values) <= MAX_LABEL_VALUES:
        return None
    count = f"{len(values)}" if complete else f"at least {len(values)}"
    return (f"{where} {verb} {count} distinct values ({value_preview(values)}): this looks like a "
            f"scan, not a label mask (at most {MAX_LABEL_VALUES} labels); choose the mask")


def values_of(array: np.ndarray) -> np.ndarray:
    """The distinct values of a uint8/uint16 array, sorted (bincount: no sort of the voxels)."""
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(array.reshape(-1), minlength=1)
    return np.flatnonzero(counts)


@dataclass(frozen=True)
class LabelMap:
    """Which mask value each class stands for: class i is `values[i]` in the user's masks."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        if not values:
            raise ValueError("a label map needs at least one value")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"label values {list(values)} are not sorted and distinct")
        if values[0] < 0 or values[-1] >= _VALUE_LIMIT:
            raise ValueError(f"label values {list(values)} are outside 0..{_VALUE_LIMIT - 1}")
        object.__setattr__(self, "values", values)

    @classmethod
    def identity(cls, classes: int) -> LabelMap:
        """Classes 0..classes-1 written as themselves."""
        return cls(tuple(range(classes)))

    @property
    def classes(self) -> int:
        return len(self.values)

    @property
    def is_identity(self) -> bool:
        return self.values == tuple(range(len(self.values)))

    @property
    def value_dtype(self) -> np.dtype:
        """The smallest mask type holding every value (uint8 or uint16)."""
        return np.dtype(np.uint8 if self.values[-1] <= 255 else np.uint16)

    def lut(self) -> np.ndarray:
        """Value -> class index for every uint16 value; values not in the map give class 0."""
        table = np.zeros(_VALUE_LIMIT, dtype=np.uint8 if self.classes <= 256 else np.uint16)
        table[list(self.values)] = np.arange(self.classes)
        return table

    def to_index(self, array: np.ndarray) -> np.ndarray:
        """Class indices of a mask array (uint8/uint16 values); unknown values become class 0."""
        return self.lut()[array]

    def to_values(self, indices: np.ndarray) -> np.ndarray:
        """The user's values for an array of class indices (uint8 or uint16)."""
        return np.asarray(self.values, dtype=self.value_dtype)[indices]

    def to_dict(self) -> dict:
        return {"label_values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict, classes: int | None = None) -> LabelMap | None:
        """The map stored in weights metadata or a summary; None when absent (labels are the
        class indices). ValueError when it is unusable or does not match `classes`."""
        values = data.get("label_values")
        if values is None:
            return None
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"label values {values!r} are not a list of whole numbers")
        label_map = cls(tuple(values))
        if classes is not None and label_map.classes != classes:
            raise ValueError(f"{label_map.classes} label values for {classes} classes")
        return label_map

    def note(self, names: Sequence[str] = ()) -> str:
        """One plain sentence for the data summary, saying how values become classes."""
        names = list(names)
        pairs = ", ".join(f"{v} -> {names[i] if i < len(names) else f'class {i}'}"
                          for i, v in enumerate(self.values))
        return (f"the masks hold the values {', '.join(map(str, self.values))} rather than "
                f"0..{self.classes - 1}, so each value is one class ({pairs}); predicted masks "
                "are written with the same values")


def label_map_for(values: Iterable[int], class_names: Sequence[str] | None = None,
                  where: str = "the masks") -> LabelMap:
    """The classes that the sorted union of mask values makes.

    Values that are already 0..N-1 (or, with class names, all below their count) are class
    indices as they are. Anything else is mapped: the k-th smallest value is class k; class
    names, when given, then name the values in that order and must be one per value.

    Raises:
        LabelError: too many values for a label mask, or class names that do not match the
            values found.
    """
    found = sorted({int(v) for v in values})
    problem = too_many_values(where, found, verb="hold")
    if problem:
        raise LabelError(problem + ".")
    names = list(class_names or [])
    if names and (not found or found[-1] < len(names)):
        return LabelMap.identity(len(names))
    if not found:
        return LabelMap.identity(1)
    label_map = LabelMap(tuple(found))
    if names and len(names) != label_map.classes:
        raise LabelError(
            f"{where} hold the values {', '.join(map(str, found))} ({len(found)} classes) but "
            f"{len(names)} class names were given ({', '.join(names)}): give one name per value, "
            "in this order.")
    return label_map


# ----------------------------------------------------------------------------------------------
# Class names


def file_key(name: str) -> str:
    """The part of a file name a class name becomes (as predict.probability_target writes it),
    folded to lower case: macOS and Windows do not tell `Bone` from `bone`."""
    return (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class").lower()


def check_class_names(names: Sequence[str], error: type[BoneAppsError] = BoneAppsError,
                      where: str = "class names") -> tuple[str, ...]:
    """Refuse empty, repeated or file-name-clashing class names with one sentence.

    Each class's probability map is written as a file named after the class, so two names
    that become the same file name (`bone 1` and `bone/1`, or `Bone` and `bone`) would
    overwrite each other.

    Returns:
        The names, stripped, as a tuple.
    """
    names = tuple(str(n).strip() for n in names)
    if any(not n for n in names):
        raise error(f"{where} ({', '.join(names)}) include an empty name: give every class a name.")
    seen: dict[str, str] = {}
    for name in names:
        if name in seen.values():
            raise error(f"{where} ({', '.join(names)}) name {name!r} twice: give every class its "
                        "own name.")
        key = file_key(name)
        if key in seen:
            raise error(f"{where} {seen[key]!r} and {name!r} would both be saved as files named "
                        f"{key!r} (probability maps): rename one of them.")
        seen[key] = name
    return names
