"""Exceptions core raises for problems a user can fix."""

from __future__ import annotations

import importlib


class BoneAppsError(Exception):
    """A problem with the user's input or environment, with a one-sentence fix-it message."""

    def shown(self, as_label: bool = False) -> str:
        """The message as a front end shows it; options are named by label when `as_label`
        (the windows) and by flag otherwise (the command line)."""
        return str(self)


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


class OptionError(BoneAppsError):
    """An option of a job's config is invalid; `field` names it (a field of the config).

    The message writes an option it names as {field_name}; str() shows each as its flag
    (`--norm`, for the command line) and `shown(as_label=True)` as its label ("Normalization",
    for the windows), both from the config's field metadata (bone_apps.core.options).
    `config_module` names the module that declares the config (importing it registers its options),
    so a message renders the same whichever modules were imported before it was raised.
    """

    config_module: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # keep the field when the error crosses processes (DDP ranks)
        return type(self), (self.args[0] if self.args else "", self.field)

    def shown(self, as_label: bool = False) -> str:
        """The message, naming options by flag, or by label when `as_label`."""
        from bone_apps.core.options import render

        if self.config_module is not None:
            importlib.import_module(self.config_module)
        return render(str(self.args[0]) if self.args else "", type(self), as_label)

    def __str__(self) -> str:
        return self.shown()


class FitConfigError(OptionError):
    """A fitting option is invalid or does not suit the data."""

    config_module = "bone_apps.core.fit.config"


class DataCheckError(BoneAppsError):
    """Scan/mask pairs failed the checks before fitting; the message lists every problem."""


class PredictConfigError(OptionError):
    """A prediction option is invalid or does not suit the scan or the model."""

    config_module = "bone_apps.core.predict.config"


class ForeignFilesError(OutputExistsError):
    """An output to replace holds files bone_apps did not write; they are never touched."""


class OutputLockedError(BoneAppsError):
    """Another bone_apps run is writing the same output right now."""


class OutputWriteError(BoneAppsError):
    """An output could not be written: full disk, read-only folder, vanished folder."""
