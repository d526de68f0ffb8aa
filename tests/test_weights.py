"""The weights file: round trip, unwrapping, atomic writes, and refusal of foreign files."""

from __future__ import annotations

import pickle

import pytest
import torch

from bone_apps.core.errors import WeightsError
from bone_apps.core.model.models import build_model, model_from_meta
from bone_apps.core.model.weights import (
    WEIGHTS_FORMAT_1,
    load_weights,
    save_weights,
    summarize_meta,
    unwrap_model,
)


def _meta(**changes) -> dict:
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": ["background", "bone", "pores"], "patch_size": 64, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": 32,
            "fit_config": {"lr": 0.001, "pairs": [["a", "b"]]}, "best_epoch": 2,
            "metrics": {"val_iou": 0.8}}
    meta.update(changes)
    return meta


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("2d", "unet", "resnet18", 1, 3)


def test_round_trip_of_a_wrapped_model(tmp_path, model):
    path = save_weights(tmp_path / "w.pth", torch.nn.DataParallel(model), _meta())
    state, meta = load_weights(path)
    assert set(state) == set(model.state_dict())  # no "module." prefixes
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    assert meta["version"].endswith(" standalone") and meta["torch_version"] == torch.__version__
    assert meta["fit_config"]["pairs"] == [["a", "b"]] and meta["date"]
    rebuilt = model_from_meta(meta)
    rebuilt.load_state_dict(state)
    assert "Unet with resnet18" in summarize_meta(meta) and "0.8000" in summarize_meta(meta)
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]  # no temporary file left


def test_unwrap_model_sees_through_wrappers(model):
    assert unwrap_model(torch.nn.DataParallel(torch.nn.DataParallel(model))) is model


def test_incomplete_or_non_plain_meta_is_not_saved(tmp_path, model):
    with pytest.raises(ValueError, match="norm"):
        save_weights(tmp_path / "w.pth", model, {k: v for k, v in _meta().items() if k != "norm"})
    with pytest.raises(TypeError, match="not plain data"):
        save_weights(tmp_path / "w.pth", model, _meta(metrics={"x": torch.zeros(1)}))
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "none.pth")


def test_foreign_files_are_refused(tmp_path, model):
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)  # a bare state_dict, as other tools write
    with pytest.raises(WeightsError, match="not a bone_apps weights file"):
        load_weights(plain)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(WeightsError, match="not a bone_apps weights file"):
        load_weights(text)
    newer = tmp_path / "newer.pth"
    torch.save({"format": "bone_apps.weights/9", "state_dict": {}, "meta": {}}, newer)
    with pytest.raises(WeightsError, match="update bone_apps"):
        load_weights(newer)
    partial = tmp_path / "partial.pth"
    torch.save({"format": WEIGHTS_FORMAT_1, "state_dict": model.state_dict(),
                "meta": {"dims": "2d"}}, partial)
    with pytest.raises(WeightsError, match="lacks metadata"):
        load_weights(partial)


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran.txt"
    crafted = tmp_path / "crafted.pth"
    payload = {"format": WEIGHTS_FORMAT_1, "state_dict": {}, "meta": _meta(), "x": _Payload(str(marker))}
    torch.save(payload, crafted, pickle_module=pickle)
    with pytest.raises(WeightsError, match="not plain data"):
        load_weights(crafted)
    assert not marker.exists()
    # The same payload really runs code when loaded unsafely: the test would catch a regression.
    torch.load(crafted, weights_only=False)
    assert marker.read_text() == "pwned"
