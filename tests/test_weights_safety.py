"""Weights files that must never give a prediction: NaN/Inf parameters, truncated files, and
models whose input channels differ from their metadata or from what the scan mode needs.

Every file is real: written by save_weights / torch.save, or a real file cut short.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bone_apps.cli import main
from bone_apps.core.errors import WeightsError
from bone_apps.core.model.models import build_model
from bone_apps.core.model.weights import WEIGHTS_FORMAT_1, load_weights, save_weights


def _meta(**changes) -> dict:
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": ["background", "bone", "pores"], "patch_size": 32, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": 32}
    meta.update(changes)
    return meta


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("2d", "Unet", "resnet18", 1, 3)


@pytest.fixture(scope="module")
def good(model, tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("good") / "model.pth", model, _meta())


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))


def _refused_by_predict(path: Path, sample_root: Path, out: Path, capsys) -> str:
    """`bone predict` with these weights: exit 2, one line, nothing written; the line."""
    code = main(["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(path),
                 "--out", str(out), "--device", "cpu", "--chunk", "32"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and str(path) in err
    return err


def test_a_good_file_still_loads(good):
    state, meta = load_weights(good)
    assert state and meta["in_channels"] == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_parameters_are_refused(model, tmp_path, sample_root, capsys, value):
    broken = build_model("2d", "Unet", "resnet18", 1, 3)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.segmentation_head[0].weight[0, 0, 0, 0] = value
    path = save_weights(tmp_path / "diverged.pth", broken, _meta())
    with pytest.raises(WeightsError, match="not numbers") as info:
        load_weights(path)
    assert "segmentation_head.0.weight" in str(info.value) and "\n" not in str(info.value)
    err = _refused_by_predict(path, sample_root, tmp_path / "labels", capsys)
    assert "NaN or infinity" in err


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.9999])
def test_truncated_files_are_refused(good, tmp_path, sample_root, capsys, keep):
    data = good.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="incomplete or damaged") as info:
        load_weights(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    _refused_by_predict(path, sample_root, tmp_path / "labels", capsys)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match=str(path)):
        load_weights(path)


def test_a_model_with_other_input_channels_than_its_metadata_is_refused(tmp_path, sample_root,
                                                                        capsys):
    three = build_model("2d", "Unet", "resnet18", 3, 3)  # e.g. a 2.5D model relabelled 2D
    path = save_weights(tmp_path / "three.pth", three, _meta())
    with pytest.raises(WeightsError, match="3 input channel.s. but its metadata says 1"):
        load_weights(path)
    _refused_by_predict(path, sample_root, tmp_path / "labels", capsys)


def test_metadata_channels_that_the_scan_mode_cannot_feed_are_refused(model, tmp_path, sample_root,
                                                                      capsys):
    # 2.5D with one slice of context needs 3 channels; the file says 1 (and holds 1).
    path = tmp_path / "mode.pth"
    torch.save({"format": WEIGHTS_FORMAT_1, "state_dict": model.state_dict(),
                "meta": {**_meta(dims="2.5d", context=1), "version": "x"}}, path)
    with pytest.raises(WeightsError, match="a 2.5d with 1 slice.s. of context model takes 3"):
        load_weights(path)
    _refused_by_predict(path, sample_root, tmp_path / "labels", capsys)


def test_a_3d_model_is_checked_too(tmp_path):
    net = build_model("3d", "BasicUNet", "tiny", 2, 3, patch_depth=16)
    path = save_weights(tmp_path / "3d.pth", net, _meta(dims="3d", arch="BasicUNet", encoder="tiny",
                                                        patch_depth=16))
    with pytest.raises(WeightsError, match="2 input channel.s. but its metadata says 1"):
        load_weights(path)


def test_bad_label_values_in_metadata_are_refused(model, tmp_path):
    path = save_weights(tmp_path / "labels.pth", model, _meta(label_values=[0, 255]))
    with pytest.raises(WeightsError, match="unusable metadata"):
        load_weights(path)
    ok = save_weights(tmp_path / "ok.pth", model, _meta(label_values=[0, 128, 255]))
    assert load_weights(ok)[1]["label_values"] == [0, 128, 255]


def test_an_empty_state_dict_is_refused(tmp_path):
    path = tmp_path / "nothing.pth"
    torch.save({"format": WEIGHTS_FORMAT_1, "state_dict": {}, "meta": {**_meta(), "version": "x"}},
               path)
    with pytest.raises(WeightsError, match="no usable parameters"):
        load_weights(path)
