"""Segmentation networks: the architecture and encoder registries and model construction.

2D and 2.5D models come from segmentation_models_pytorch (any of its architectures with any
of its encoders). 3D models come from MONAI, a maintained medical-imaging library that is
already a dependency; its BasicUNet is a plain, well-tested 3D U-Net with no pretrained
weights to download.

Input layouts: 2D (B, 1, H, W); 2.5D (B, 2k+1, H, W), slices z-k..z+k as channels with the
edge slices replicated; 3D (B, 1, D, H, W). Outputs are logits (B, classes, H, W) or
(B, classes, D, H, W).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from bone_apps.core.errors import BoneAppsError, PretrainedUnavailableError

if TYPE_CHECKING:
    import torch

# 3D networks: name -> {width preset -> features per level}. MONAI's BasicUNet takes six
# feature counts (five encoder levels and the last decoder level); four poolings, so inputs
# must be a multiple of 16 along every axis.
_BASICUNET_FEATURES = {
    "tiny": (8, 8, 16, 32, 64, 8),
    "small": (16, 16, 32, 64, 128, 16),
    "base": (32, 32, 64, 128, 256, 32),  # MONAI's default
}
ARCHITECTURES_3D = {"BasicUNet": _BASICUNET_FEATURES}
REQUIRED_MULTIPLE_2D = 32  # a 5-stage 2D encoder (output stride 32); patch sizes are checked against it
REQUIRED_MULTIPLE_3D = 16
_HUB_HOST = ("huggingface.co", 443)

# Convolutions of new models pad with replicated edges (see set_border_padding).
BORDER_PADDING = "replicate"

# What segmentation_models_pytorch 0.6 lists, kept here so that showing the choices needs no
# import of smp (with timm and torchvision, many seconds). tests/test_windows_state.py checks
# both against list_architectures() and list_encoders(): update them with smp.
SMP_ARCHITECTURES = ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3",
                     "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT")
SMP_ENCODERS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d",
    "resnext101_32x48d", "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131", "vgg11",
    "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "senet154",
    "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d", "se_resnext101_32x4d",
    "densenet121", "densenet169", "densenet201", "densenet161", "inceptionresnetv2", "inceptionv4",
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4",
    "efficientnet-b5", "efficientnet-b6", "efficientnet-b7", "mobilenet_v2", "xception",
    "timm-efficientnet-b0", "timm-efficientnet-b1", "timm-efficientnet-b2", "timm-efficientnet-b3",
    "timm-efficientnet-b4", "timm-efficientnet-b5", "timm-efficientnet-b6", "timm-efficientnet-b7",
    "timm-efficientnet-b8", "timm-efficientnet-l2", "timm-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite1", "timm-tf_efficientnet_lite2", "timm-tf_efficientnet_lite3",
    "timm-tf_efficientnet_lite4", "timm-skresnet18", "timm-skresnet34", "timm-skresnext50_32x4d",
    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "mobileone_s0", "mobileone_s1",
    "mobileone_s2", "mobileone_s3", "mobileone_s4")
# Encoders of SMP_ENCODERS that cannot run dilated (DeepLabV3, DeepLabV3+ and PAN need that).
SMP_UNDILATABLE_ENCODERS = frozenset({
    "densenet121", "densenet161", "densenet169", "densenet201", "inceptionresnetv2", "inceptionv4",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "xception"})

def _smp_mapping() -> dict[str, type]:
    import segmentation_models_pytorch as smp

    return dict(smp.MODEL_ARCHITECTURES_MAPPING)


def list_architectures() -> list[str]:
    """Every architecture name: segmentation_models_pytorch's (2D/2.5D), then the 3D ones."""
    return [cls.__name__ for cls in _smp_mapping().values()] + list(ARCHITECTURES_3D)


def list_encoders(dims: str = "2d") -> list[str]:
    """Encoder names for 2D/2.5D architectures, or width presets for the 3D ones.

    2D also accepts any timm encoder as "tu-<name>" (not listed: there are hundreds).
    """
    if dims == "3d":
        return list(_BASICUNET_FEATURES)
    from segmentation_models_pytorch.encoders import get_encoder_names

    return list(get_encoder_names())


def canonical_architecture(arch: str, dims: str = "2d") -> str:
    """The registry spelling of `arch` (case-insensitive); BoneAppsError listing valid names."""
    names = list(ARCHITECTURES_3D) if dims == "3d" else [c.__name__ for c in _smp_mapping().values()]
    for name in names:
        if name.lower() == arch.strip().lower():
            return name
    raise BoneAppsError(f"architecture {arch!r} is not available for {dims} models: use one of "
                        f"{', '.join(names)}.")


def check_encoder(encoder: str, dims: str = "2d") -> str:
    """`encoder` if it exists for `dims`; BoneAppsError listing valid names otherwise."""
    if dims != "3d" and encoder.startswith("tu-"):
        return encoder
    names = list_encoders(dims)
    if encoder not in names:
        close = [n for n in names if encoder.lower().split("-")[0][:4] in n.lower()][:8]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise BoneAppsError(f"encoder {encoder!r} is not available for {dims} models{hint}: see "
                            "`bone fit --list-models` for every name.")
    return encoder


def pretrained_reachable(timeout: float = 3.0) -> bool:
    """Whether the pretrained-weights hub answers (a quick TCP connect, no download)."""
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def build_model(
    dims: str,
    arch: str,
    encoder: str,
    in_channels: int,
    classes: int,
    encoder_weights: str | None = None,
    patch_depth: int = 1,
    padding: str = BORDER_PADDING,
) -> torch.nn.Module:
    """Construct a segmentation network.

    Args:
        dims: "2d", "2.5d" or "3d".
        arch: an smp architecture (2D/2.5D) or a 3D architecture (list_architectures()).
        encoder: an smp encoder, or for 3D a width preset ("tiny", "small", "base").
        in_channels: 1 (2D, 3D) or 2k+1 (2.5D).
        classes: output classes (>= 2).
        encoder_weights: "imagenet" to start from ImageNet weights (2D/2.5D), None for random.
        patch_depth: 3D patch depth (must be a multiple of 16; unused otherwise).
        padding: how convolutions pad at the input's border ("replicate", or "zeros" as
            weights fitted before bone_apps 0.2 were).

    Raises:
        BoneAppsError: unknown architecture/encoder or impossible combination.
        PretrainedUnavailableError: ImageNet weights were asked for and cannot be obtained.
    """
    arch = canonical_architecture(arch, dims)
    encoder = check_encoder(encoder, dims)
    if dims == "3d":
        if encoder_weights:
            raise PretrainedUnavailableError(
                f"there are no ImageNet weights for the 3D {arch}: use --init random or a "
                "weights file of this suite.")
        from monai.networks.nets import BasicUNet

        return set_border_padding(BasicUNet(spatial_dims=3, in_channels=in_channels,
                                            out_channels=classes,
                                            features=ARCHITECTURES_3D[arch][encoder]), padding)
    import segmentation_models_pytorch as smp

    key = next(k for k, c in _smp_mapping().items() if c.__name__ == arch)
    if encoder_weights and not pretrained_reachable():
        raise PretrainedUnavailableError(
            f"this computer is offline, so ImageNet weights for {encoder} cannot be downloaded: "
            "use --init random, or --init FILE.pth with a weights file of this suite.")
    try:
        return set_border_padding(
            smp.create_model(key, encoder_name=encoder, encoder_weights=encoder_weights,
                             in_channels=in_channels, classes=classes), padding)
    except (KeyError, ValueError) as exc:
        if encoder_weights and "weights" in str(exc).lower():
            raise PretrainedUnavailableError(
                f"{encoder} has no {encoder_weights} weights: use --init random.") from None
        raise BoneAppsError(f"{arch} cannot be built with encoder {encoder} ({exc}): choose "
                            "another encoder.") from None
    except OSError as exc:  # download failed: no connection, proxy, hub down
        raise PretrainedUnavailableError(
            f"ImageNet weights for {encoder} could not be downloaded ({type(exc).__name__}): use "
            "--init random, or --init FILE.pth with a weights file of this suite.") from None


def set_border_padding(model: torch.nn.Module, padding: str) -> torch.nn.Module:
    """Make every padded convolution of `model` pad its input with `padding` ("zeros",
    "replicate"); the parameters are unchanged.

    With zero padding, a network fitted on small patches with brightness and contrast
    augmentation learns to read intensities against the constant border (the only place
    where a shifted patch differs from an unshifted one); a large prediction window has no
    border near most voxels, and its labels change (cavities labelled as background).
    Replicated edges carry no fixed intensity, so the output does not depend on the window.
    """
    import torch

    if padding not in ("zeros", "replicate"):
        raise BoneAppsError(f"convolution padding {padding!r} is unknown: use zeros or replicate.")
    from torch.nn.modules.utils import _reverse_repeat_tuple

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)) and not isinstance(module.padding, str):
            # smp sets dilated encoders' padding after construction (DeepLabV3, DeepLabV3+, PAN):
            # refresh the cached padding that non-zero padding modes use.
            module._reversed_padding_repeated_twice = _reverse_repeat_tuple(module.padding, 2)
            if any(p > 0 for p in module.padding):
                module.padding_mode = padding
    return model


def required_multiple(model: torch.nn.Module, dims: str) -> int:
    """Spatial size the network needs its inputs to be a multiple of (32 for a 5-stage U-Net)."""
    if dims == "3d":
        return REQUIRED_MULTIPLE_3D
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", REQUIRED_MULTIPLE_2D))


def model_from_meta(meta: dict) -> torch.nn.Module:
    """Rebuild the network a weights file describes, with random weights (never a download)."""
    return build_model(meta["dims"], meta["arch"], meta["encoder"], int(meta["in_channels"]),
                       int(meta["classes"]), None, int(meta.get("patch_depth", 1)),
                       str(meta.get("padding", "zeros")))
