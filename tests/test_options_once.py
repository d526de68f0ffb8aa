"""Each option fact is declared once: defaults in PredictConfig, one device grammar in core."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

import pytest

from bone_apps.core.errors import BoneAppsError, FitConfigError, PredictConfigError
from bone_apps.core.fit.slice_validation import InferenceSettings
from bone_apps.core.jobs.devices import DEVICE_CHOICES, gpu_indices, parse_devices
from bone_apps.core.predict.config import PredictConfig

CORE_DEFAULTS = {f.name: f.default for f in fields(PredictConfig) if f.default is not MISSING}


def _predict_actions() -> dict[str, argparse.Action]:
    from bone_apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["predict"]._actions}


def test_cli_predict_defaults_are_predict_config_defaults():
    actions = _predict_actions()
    flagged = [name for name in CORE_DEFAULTS if name in actions]
    assert {"chunk", "overlap", "threshold", "blend", "batch", "device", "tta"} <= set(flagged)
    for name in flagged:
        assert actions[name].default == CORE_DEFAULTS[name], name
    assert f"default {CORE_DEFAULTS['threshold']:g}" in actions["threshold"].help
    assert f"default {CORE_DEFAULTS['device']}" in actions["device"].help
    assert f"{InferenceSettings().chunk} for older weights" in actions["chunk"].help


def test_dlpred_starts_from_the_core_defaults(qtbot):
    from bone_apps.dlpred.options import OptionsBox

    class Blank:
        def get(self, key: str, default: str = "") -> str:
            return default

        def set(self, key: str, value: str) -> None:
            pass

    box = OptionsBox(Blank(), [("Automatic", "auto"), ("CPU", "cpu")])
    qtbot.addWidget(box)
    paper = InferenceSettings()
    expected = {**CORE_DEFAULTS, "chunk": paper.chunk, "overlap": paper.overlap, "blend": paper.blend,
                "batch": CORE_DEFAULTS["batch"] or 0}
    initial = box.values()
    for name in ("device", "chunk", "overlap", "threshold", "blend", "batch", "tta", "probabilities"):
        assert getattr(initial, name) == expected[name], name
    box.threshold.setValue(0.9)
    box.restore_defaults()
    assert box.values() == initial


@pytest.mark.parametrize(("text", "devices"), [
    ("auto", ["auto"]), ("cpu", ["cpu"]), ("CPU", ["cpu"]), (" cuda ", ["cuda"]),
    ("cuda:1", ["cuda:1"]), ("cuda:0,1", ["cuda:0", "cuda:1"]), ("cuda: 0, 2", ["cuda:0", "cuda:2"]),
    ("cuda:all", ["cuda:all"]), ("CUDA:ALL", ["cuda:all"]),
])
def test_device_grammar_valid(text, devices):
    assert parse_devices(text) == devices
    assert text in DEVICE_CHOICES


@pytest.mark.parametrize("text", ["", "gpu", "cuda:", "cuda0", "cuda:a", "cuda:0,", "cuda:-1",
                                  "cuda:all,1", "cpu:0", "quantum"])
def test_device_grammar_invalid_is_one_sentence_naming_the_forms(text):
    with pytest.raises(BoneAppsError) as info:
        parse_devices(text)
    message = str(info.value)
    assert message.count(". ") == 0 and message.endswith(".")
    assert "auto, cpu, cuda, cuda:N, cuda:0,1 or cuda:all" in message
    assert text not in DEVICE_CHOICES
    with pytest.raises(PredictConfigError):
        parse_devices(text, PredictConfigError)


def test_gpu_indices():
    assert gpu_indices(["cuda"], 4) == [0]
    assert gpu_indices(["cuda:all"], 3) == [0, 1, 2]
    assert gpu_indices(["cuda:2", "cuda:1"], 4) == [2, 1]


def _no_cuda(monkeypatch):
    import bone_apps.core.jobs.monitor as monitor

    monkeypatch.setattr(monitor, "cuda_available_cheaply", lambda: False)


@pytest.mark.parametrize("text", ["cuda", "cuda:1", "cuda:0,1", "cuda:all"])
def test_cuda_forms_parse_everywhere_and_fail_at_resolve_without_a_gpu(monkeypatch, tmp_path, text):
    from bone_apps.core.predict.segment import resolve_devices
    from bone_apps.core.score import scoring

    _no_cuda(monkeypatch)
    monkeypatch.setattr(scoring, "cuda_available_cheaply", lambda: False)
    PredictConfig(scans=(tmp_path,), weights=tmp_path / "w.pth", out=tmp_path / "o", device=text)
    with pytest.raises(PredictConfigError, match="no CUDA GPU is available"):
        resolve_devices(text)
    with pytest.raises(BoneAppsError, match="no CUDA GPU is available"):
        scoring.resolve_device(text)


def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu(monkeypatch):
    from bone_apps.core.predict.segment import resolve_devices
    from bone_apps.core.score import scoring

    _no_cuda(monkeypatch)
    monkeypatch.setattr(scoring, "cuda_available_cheaply", lambda: False)
    assert resolve_devices("auto") == resolve_devices("cpu") == ["cpu"]
    assert scoring.resolve_device("auto") is scoring.resolve_device("cpu") is scoring.Device.CPU


def test_fit_refuses_an_unknown_device_in_the_shared_words():
    from bone_apps.core.fit.loop import _Devices
    from bone_apps.core.jobs import ddp

    with pytest.raises(FitConfigError, match="cuda:0,1 or cuda:all"):
        _Devices("quantum", ddp.DistInfo())
