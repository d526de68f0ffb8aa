"""Architecture registries and model construction for 2D, 2.5D and 3D."""

from __future__ import annotations

import pytest
import torch

from bone_apps.core.errors import BoneAppsError, PretrainedUnavailableError
from bone_apps.core.model import models
from bone_apps.core.model.models import (
    build_model,
    list_architectures,
    list_encoders,
    model_from_meta,
    required_multiple,
)


def test_registries_list_smp_and_3d_names():
    archs = list_architectures()
    assert "Unet" in archs and "DeepLabV3Plus" in archs and "BasicUNet" in archs
    assert "resnet18" in list_encoders() and list_encoders("3d") == ["tiny", "small", "base"]


@pytest.mark.parametrize(("dims", "channels", "shape"), [
    ("2d", 1, (2, 1, 32, 32)),
    ("2.5d", 5, (2, 5, 32, 32)),
])
def test_2d_models_give_logits_per_class(dims, channels, shape):
    model = build_model(dims, "unet", "resnet18", channels, 3)
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (2, 3, 32, 32)
    assert required_multiple(model, dims) == 32


def test_3d_model_gives_logits_per_class():
    model = build_model("3d", "basicunet", "tiny", 1, 4, patch_depth=16)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 4, 16, 32, 32)
    assert required_multiple(model, "3d") == 16


def test_model_from_meta_rebuilds_the_same_structure():
    meta = {"dims": "2d", "arch": "FPN", "encoder": "resnet18", "in_channels": 1, "classes": 2,
            "patch_depth": 1}
    model = model_from_meta(meta)
    original = build_model("2d", "FPN", "resnet18", 1, 2)
    assert model.state_dict().keys() == original.state_dict().keys()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(BoneAppsError, match="Unet, UnetPlusPlus"):
        build_model("2d", "transunet", "resnet18", 1, 2)
    with pytest.raises(BoneAppsError, match="list-models"):
        build_model("2d", "unet", "resnet19", 1, 2)
    with pytest.raises(BoneAppsError, match="BasicUNet"):
        build_model("3d", "unet", "tiny", 1, 2)


def test_imagenet_offline_is_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(models, "pretrained_reachable", lambda timeout=3.0: False)
    with pytest.raises(PretrainedUnavailableError) as info:
        build_model("2d", "unet", "resnet18", 1, 3, encoder_weights="imagenet")
    message = str(info.value)
    assert "offline" in message and "--init random" in message and "\n" not in message
    with pytest.raises(PretrainedUnavailableError, match="no ImageNet weights for the 3D"):
        build_model("3d", "BasicUNet", "tiny", 1, 3, encoder_weights="imagenet")


def test_failed_download_is_one_clear_sentence(monkeypatch):
    import segmentation_models_pytorch as smp

    def fail(*args, **kwargs):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(models, "pretrained_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(smp, "create_model", fail)
    with pytest.raises(PretrainedUnavailableError, match="could not be downloaded"):
        build_model("2d", "unet", "resnet18", 1, 3, encoder_weights="imagenet")
