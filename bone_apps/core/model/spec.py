"""ModelSpec: the one description of a segmentation network.

Fitting makes it from its config (`ModelSpec.from_config`), the weights file stores it
(`to_meta`) and prediction, export and the windows read it back (`from_meta`), checked once.
`build()` constructs the network it describes (with random weights, never a download).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bone_apps.core.data.normalize import NormMethod
from bone_apps.core.data.sampling import Dims
from bone_apps.core.errors import BoneAppsError, WeightsError
from bone_apps.core.io.labels import LabelMap, check_class_names

if TYPE_CHECKING:
    import torch

    from bone_apps.core.fit.config import FitConfig

# Metadata keys a weights file stores for the spec (the flat part of the weights' metadata).
SPEC_KEYS = ("dims", "arch", "encoder", "in_channels", "classes", "class_names", "label_values",
             "patch_size", "context", "patch_depth", "norm", "required_multiple", "padding")
# Convolution padding of weights that do not say (fitted before bone_apps 0.2).
LEGACY_PADDING = "zeros"


@dataclass(frozen=True)
class ModelSpec:
    """A network as fitting built it and prediction must feed it.

    dims and norm accept their names and are held as the Dims and NormMethod enums.
    in_channels is 1 for 2D and 3D, 2 * context + 1 for 2.5D. label_values are the mask
    values of class 0, 1, ... (None: the class numbers themselves). patch_size is the
    training patch edge, patch_depth its depth (3D; 1 otherwise); required_multiple is the
    size every network input must be a multiple of.
    """

    dims: Dims
    in_channels: int
    classes: int
    class_names: tuple[str, ...]
    context: int
    patch_depth: int
    norm: NormMethod
    required_multiple: int
    label_values: tuple[int, ...] | None = None
    arch: str = ""
    encoder: str = ""
    patch_size: int = 0
    padding: str = LEGACY_PADDING

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", Dims.parse(self.dims))
        object.__setattr__(self, "norm", NormMethod.parse(self.norm))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        if self.label_values is not None:
            object.__setattr__(self, "label_values", tuple(int(v) for v in self.label_values))

    @classmethod
    def from_config(cls, config: FitConfig, *, arch: str, classes: int, class_names: tuple[str, ...],
                    required_multiple: int, label_values: tuple[int, ...] | None = None,
                    padding: str = "replicate") -> ModelSpec:
        """The spec of the network a fit config builds; `arch` in its registry spelling."""
        dims = Dims.parse(config.dims)
        context = int(config.context) if dims is Dims.D25 else 0
        return cls(dims=dims, in_channels=2 * context + 1, classes=int(classes),
                   class_names=tuple(class_names), context=context,
                   patch_depth=int(config.patch_depth) if dims is Dims.D3 else 1,
                   norm=NormMethod.parse(config.norm), required_multiple=int(required_multiple),
                   label_values=label_values, arch=arch, encoder=config.encoder,
                   patch_size=int(config.patch), padding=padding)

    def to_meta(self) -> dict:
        """The spec as plain weights metadata (SPEC_KEYS)."""
        values = (list(self.label_values) if self.label_values is not None
                  else list(range(self.classes)))
        return {"dims": self.dims.value, "arch": self.arch, "encoder": self.encoder,
                "in_channels": self.in_channels, "classes": self.classes,
                "class_names": list(self.class_names), "label_values": values,
                "patch_size": self.patch_size, "context": self.context, "patch_depth": self.patch_depth,
                "norm": self.norm.value, "required_multiple": self.required_multiple,
                "padding": self.padding}

    @classmethod
    def from_meta(cls, meta: dict, source: str | os.PathLike = "the weights file") -> ModelSpec:
        """Check and read the metadata; WeightsError naming `source` when it does not add up."""
        try:
            spec = cls(
                dims=Dims.parse(meta["dims"]), in_channels=int(meta["in_channels"]),
                classes=int(meta["classes"]), class_names=tuple(str(n) for n in meta["class_names"]),
                context=int(meta.get("context") or 0), patch_depth=int(meta.get("patch_depth") or 1),
                norm=NormMethod.parse(meta["norm"]),
                required_multiple=int(meta.get("required_multiple") or 32),
                label_values=_label_values(meta), arch=str(meta.get("arch") or ""),
                encoder=str(meta.get("encoder") or ""), patch_size=int(meta.get("patch_size") or 0),
                padding=str(meta.get("padding") or LEGACY_PADDING))
            check_class_names(spec.class_names, WeightsError, f"the class names of {source}")
        except WeightsError:
            raise
        except (KeyError, TypeError, ValueError, BoneAppsError) as exc:
            raise WeightsError(f"{source} has unusable metadata ({exc}): fit the model again "
                               "with bone fit.") from None
        problem = spec.problem()
        if problem:
            raise WeightsError(f"{source} has inconsistent metadata ({problem}): fit the model again "
                               "with bone fit.")
        return spec

    def problem(self) -> str | None:
        """What makes the spec impossible, in words; None when it adds up."""
        if self.classes < 2 or len(self.class_names) != self.classes:
            return f"{self.classes} classes but {len(self.class_names)} class names"
        if self.dims is Dims.D25 and self.in_channels != 2 * self.context + 1:
            return f"{self.in_channels} input channels for {self.context} slices of context"
        if self.dims is not Dims.D25 and self.in_channels != 1:
            return f"{self.in_channels} input channels for a {self.dims.value} model"
        if self.required_multiple < 1 or self.patch_depth < 1:
            return "a non-positive size"
        return None

    def build(self) -> torch.nn.Module:
        """The network this spec describes, with random weights (never a download)."""
        from bone_apps.core.model.models import build_model

        return build_model(self.dims.value, self.arch, self.encoder, self.in_channels, self.classes,
                           None, self.patch_depth, self.padding)


def _label_values(meta: dict) -> tuple[int, ...] | None:
    """The mask values predictions are written with (meta["label_values"]); None: 0..N-1."""
    label_map = LabelMap.from_dict(meta, int(meta["classes"]))
    return None if label_map is None or label_map.is_identity else label_map.values
