"""Architecture and encoder choices the window offers: only pairs that can be built.

segmentation_models_pytorch refuses some pairs when the model is built: UNet++ and LinkNet
cannot take Mix Transformer (mit_b*) encoders; DeepLabV3, DeepLabV3+ and PAN need an
encoder that can run dilated (VGG, DenseNet, Inception and Xception cannot); DPT takes only
timm vision transformers ("tu-..."), which are not listed. The names come from the static
tables in core.models (checked against smp by the tests), so offering them imports no smp.
"""

from __future__ import annotations

from functools import cache

from bone_apps.core.model import models

# Architectures whose encoder must produce dilated (output stride 8/16) features.
_DILATED = {"DeepLabV3", "DeepLabV3Plus", "PAN"}
_NO_MIT = {"UnetPlusPlus", "Linknet"}
_TIMM_VIT_ONLY = {"DPT"}
PAPER_ARCH, PAPER_ENCODER = "Unet", "resnet18"


def dilation_unsupported_in_smp() -> frozenset[str]:
    """Encoders smp itself cannot dilate (they override make_dilated to raise); imports smp."""
    from segmentation_models_pytorch.encoders import encoders
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    return frozenset(name for name, entry in encoders.items()
                     if getattr(entry["encoder"], "make_dilated", None)
                     is not EncoderMixin.make_dilated)


def architecture_choices(dims: str) -> list[str]:
    """Architectures selectable for `dims` ("2d", "2.5d", "3d"), the paper's first."""
    if dims == "3d":
        return list(models.ARCHITECTURES_3D)
    names = [n for n in models.SMP_ARCHITECTURES if n not in _TIMM_VIT_ONLY]
    return sorted(names, key=lambda n: n != PAPER_ARCH)


@cache
def encoder_choices(arch: str, dims: str) -> list[str]:
    """Encoders that `arch` can be built with for `dims`, the paper's first."""
    if dims == "3d" or arch in models.ARCHITECTURES_3D:
        return models.list_encoders("3d")
    names = list(models.SMP_ENCODERS)
    if arch in _NO_MIT:
        names = [n for n in names if not n.startswith("mit_b")]
    if arch in _DILATED:
        names = [n for n in names if n not in models.SMP_UNDILATABLE_ENCODERS]
    return sorted(names, key=lambda n: n != PAPER_ENCODER)
