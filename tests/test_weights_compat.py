"""Weights written before format 2 still load and predict the same labels; the model's one
description (ModelSpec) survives the weights file unchanged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch

from bone_apps import __version__
from bone_apps.core.data.normalize import NormMethod
from bone_apps.core.data.sampling import Dims
from bone_apps.core.io.volume import open_volume
from bone_apps.core.model.models import BORDER_PADDING, build_model, required_multiple
from bone_apps.core.model.spec import ModelSpec
from bone_apps.core.model.weights import WEIGHTS_FORMAT, load_weights, save_weights, weights_meta
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.segment import run_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = ["background", "bone", "pores"]
KINDS = {"2d": ("Unet", "resnet18", 0, 1), "3d": ("BasicUNet", "tiny", 0, 16)}
FIT_CONFIG = {"epochs": 1, "batch": 2, "lr": 0.001, "data": "somewhere", "norm": "zscore"}
METRICS = {"val_iou": 0.5, "val_loss": 0.7, "train_iou": 0.6, "train_loss": 0.6,
           "val_iou_per_class": {"background": 0.9, "bone": 0.4, "pores": 0.2}}


def _model(dims: str) -> torch.nn.Module:
    arch, encoder, _context, depth = KINDS[dims]
    torch.manual_seed(3)
    return build_model(dims, arch, encoder, 1, 3, patch_depth=depth)


def write_format_1(path: Path, model: torch.nn.Module, dims: str) -> Path:
    """A weights file exactly as bone_apps wrote it before format 2 (the fit loop's dict)."""
    import segmentation_models_pytorch as smp

    arch, encoder, context, depth = KINDS[dims]
    meta = {
        "version": f"{__version__} standalone", "dims": dims, "arch": arch, "encoder": encoder,
        "in_channels": 1, "classes": 3, "class_names": CLASS_NAMES, "patch_size": 64,
        "label_values": [0, 1, 2], "context": context, "patch_depth": depth, "norm": "zscore",
        "fit_config": FIT_CONFIG, "best_epoch": 1, "metrics": METRICS,
        "required_multiple": required_multiple(model, dims), "padding": BORDER_PADDING,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__), "smp_version": str(smp.__version__),
    }
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"format": "bone_apps.weights/1", "state_dict": state, "meta": meta}, path)
    return path


def write_format_2(path: Path, model: torch.nn.Module, dims: str) -> Path:
    """The same model as fitting saves it now."""
    spec = ModelSpec.from_meta(load_weights(write_format_1(path, model, dims))[1])
    split = {"train": ["bone_00", "bone_01"], "val": ["bone_02"], "seed": 42, "train_fraction": 0.8}
    return save_weights(path, model, weights_meta(spec, FIT_CONFIG, split, METRICS, best_epoch=1))


def _labels(scan: Path, weights: Path, out: Path) -> np.ndarray:
    run_predict(PredictConfig(scans=(scan,), weights=weights, out=out, device="cpu", stats_workers=1))
    volume = open_volume(out, role="mask")
    return volume.read_slab(0, volume.shape[0])


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_format_1_weights_predict_the_same_labels_as_format_2(dims, sample_root, tmp_path):
    model = _model(dims)
    old = write_format_1(tmp_path / "old.pth", model, dims)
    new = write_format_2(tmp_path / "new.pth", model, dims)
    assert torch.load(new, weights_only=True)["format"] == WEIGHTS_FORMAT == "bone_apps.weights/2"
    scan = sample_root / "scans" / "bone_00"
    labels_old = _labels(scan, old, tmp_path / "old-labels")
    labels_new = _labels(scan, new, tmp_path / "new-labels")
    assert labels_old.shape == (16, 64, 64)
    assert np.array_equal(labels_old, labels_new)

    _, meta_old = load_weights(old)
    _, meta_new = load_weights(new)
    assert meta_old["split"] is None
    assert meta_new["split"]["train"] == ["bone_00", "bone_01"] and meta_new["split"]["val"] == ["bone_02"]
    shared = set(meta_old) - {"date", "split"}
    assert {k: meta_old[k] for k in shared} == {k: meta_new[k] for k in shared}
    assert ModelSpec.from_meta(meta_old) == ModelSpec.from_meta(meta_new)


def test_spec_round_trips_through_metadata_and_builds_its_network():
    spec = ModelSpec(dims="2.5d", in_channels=3, classes=3, class_names=CLASS_NAMES, context=1,
                     patch_depth=1, norm="minmax-full", required_multiple=32, label_values=(0, 128, 255),
                     arch="Unet", encoder="resnet18", patch_size=64, padding="replicate")
    assert spec.dims is Dims.D25 and spec.norm is NormMethod.MINMAX_FULL
    assert ModelSpec.from_meta(spec.to_meta()) == spec
    network = spec.build().eval()
    with torch.no_grad():
        assert network(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert network.encoder.conv1.padding_mode == "replicate"


def test_spec_from_a_fit_config():
    from bone_apps.core.fit.config import FitConfig

    config = FitConfig(out="x", data="y", dims="3d", arch="basicunet", encoder="tiny", patch=32,
                       patch_depth=16, context=2, norm="minmax")
    spec = ModelSpec.from_config(config, arch="BasicUNet", classes=2, class_names=("air", "bone"),
                                 required_multiple=16)
    assert (spec.dims, spec.in_channels, spec.context, spec.patch_depth, spec.norm) == (
        Dims.D3, 1, 0, 16, NormMethod.MINMAX)
    assert ModelSpec.from_meta(spec.to_meta()) == spec
