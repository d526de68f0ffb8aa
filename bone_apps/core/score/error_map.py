"""Where a prediction disagrees with its reference for one class: a per-slice error map."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from bone_apps.core.errors import BoneAppsError


class ErrorKind(IntEnum):
    """The values of an error map: agreement, a false positive, a false negative."""

    AGREE = 0
    FALSE_POSITIVE = 1  # predicted as the class, the reference says otherwise
    FALSE_NEGATIVE = 2  # the reference is the class, predicted otherwise


@dataclass(frozen=True)
class ErrorCounts:
    """Pixels of one slice where prediction and reference disagree about one class."""

    false_positives: int
    false_negatives: int


def error_map(reference: np.ndarray, prediction: np.ndarray, label: int) -> np.ndarray:
    """Mark the pixels where `prediction` is wrong about class `label`.

    Args:
        reference: (Y, X) integer labels, the ground truth.
        prediction: (Y, X) integer labels of the same shape.
        label: the class to look at.

    Returns:
        (Y, X) uint8 of `ErrorKind` values: 1 false positive, 2 false negative, 0 elsewhere.

    Raises:
        BoneAppsError: the two slices differ in shape.
    """
    if reference.shape != prediction.shape:
        raise BoneAppsError(f"the reference slice is {reference.shape} but the prediction slice is "
                            f"{prediction.shape}: choose masks of the same size.")
    in_reference, in_prediction = reference == label, prediction == label
    errors = np.zeros(reference.shape, np.uint8)
    errors[in_prediction & ~in_reference] = ErrorKind.FALSE_POSITIVE
    errors[in_reference & ~in_prediction] = ErrorKind.FALSE_NEGATIVE
    return errors


def count_errors(errors: np.ndarray) -> ErrorCounts:
    """Count the false positives and false negatives of an `error_map`."""
    return ErrorCounts(int(np.count_nonzero(errors == ErrorKind.FALSE_POSITIVE)),
                       int(np.count_nonzero(errors == ErrorKind.FALSE_NEGATIVE)))
