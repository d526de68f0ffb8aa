"""Exceptions core raises for problems a user can fix."""

from __future__ import annotations


class BoneAppsError(Exception):
    """A problem with the user's input or environment, with a one-sentence fix-it message."""


class VolumeError(BoneAppsError):
    """A scan or mask on disk cannot be used as it is."""


class ShapeMismatchError(VolumeError):
    """Two volumes that must match (scan and mask, reference and prediction) do not."""


class LabelError(VolumeError):
    """A mask holds labels outside the declared classes."""


class OutputExistsError(BoneAppsError):
    """An output already exists and overwriting was not asked for."""


class WeightsError(BoneAppsError):
    """A weights file is not a usable bone_apps weights file."""


class Cancelled(BoneAppsError):
    """The user stopped a long job."""


class PretrainedUnavailableError(BoneAppsError):
    """Pretrained (ImageNet) encoder weights cannot be obtained, e.g. offline."""


class FitConfigError(BoneAppsError):
    """A fitting option is invalid or does not suit the data."""


class DataCheckError(BoneAppsError):
    """Scan/mask pairs failed the checks before fitting; the message lists every problem."""


class PredictConfigError(BoneAppsError):
    """A prediction option is invalid or does not suit the scan or the model."""


class ForeignFilesError(OutputExistsError):
    """An output to replace holds files bone_apps did not write; they are never touched."""


class OutputLockedError(BoneAppsError):
    """Another bone_apps run is writing the same output right now."""


class OutputWriteError(BoneAppsError):
    """An output could not be written: full disk, read-only folder, vanished folder."""
