"""Each option fact is declared once: defaults in PredictConfig, one device grammar in core."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

import pytest

from bone_apps.core.errors import BoneAppsError, FitConfigError, PredictConfigError
from bone_apps.core.jobs.devices import DEVICE_CHOICES, gpu_indices, parse_devices
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.settings import InferenceSettings

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
    from bone_apps.core.predict.batching import resolve_devices
    from bone_apps.core.score import scoring

    _no_cuda(monkeypatch)
    monkeypatch.setattr(scoring, "cuda_available_cheaply", lambda: False)
    PredictConfig(scans=(tmp_path,), weights=tmp_path / "w.pth", out=tmp_path / "o", device=text)
    with pytest.raises(PredictConfigError, match="no CUDA GPU is available"):
        resolve_devices(text)
    with pytest.raises(BoneAppsError, match="no CUDA GPU is available"):
        scoring.resolve_device(text)


def test_auto_and_cpu_resolve_to_the_cpu_without_a_gpu(monkeypatch):
    from bone_apps.core.predict.batching import resolve_devices
    from bone_apps.core.score import scoring

    _no_cuda(monkeypatch)
    monkeypatch.setattr(scoring, "cuda_available_cheaply", lambda: False)
    assert resolve_devices("auto") == resolve_devices("cpu") == ["cpu"]
    assert scoring.resolve_device("auto") is scoring.resolve_device("cpu") is scoring.Device.CPU


def test_fit_refuses_an_unknown_device_in_the_shared_words():
    from bone_apps.core.fit.plan import _Devices
    from bone_apps.core.jobs import ddp

    with pytest.raises(FitConfigError, match="cuda:0,1 or cuda:all"):
        _Devices("quantum", ddp.DistInfo())


# -- Options declared once: the dataclass fields' metadata make the CLI, the windows and the errors --

def _actions(command: str) -> dict[str, argparse.Action]:
    from bone_apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions}


def _configs():
    from bone_apps.core.fit.config import FitConfig

    return [("fit", FitConfig, {"pairs": "pair"}), ("predict", PredictConfig, {})]


@pytest.mark.parametrize("index", [0, 1])
def test_every_field_is_an_option_or_says_why_not(index):
    from bone_apps.core.options import described, not_options

    _, config, _ = _configs()[index]
    options, others = described(config), not_options(config)
    assert set(options) | set(others) == {f.name for f in fields(config)}
    assert not set(options) & set(others)
    for name, meta in options.items():
        assert meta.help and meta.label and meta.flag.startswith("--"), name
    assert all(len(why) > 10 for why in others.values())


@pytest.mark.parametrize("index", [0, 1])
def test_cli_options_are_the_config_fields(index):
    """Every option of the config has its flag, with the field's choices, metavar and default."""
    from bone_apps.cli.options import help_text
    from bone_apps.core.options import default_words, defaults, described

    command, config, dests = _configs()[index]
    actions = _actions(command)
    default = defaults(config)
    for name, meta in described(config).items():
        action = actions[dests.get(name, name)]
        assert meta.flag in action.option_strings, name
        assert action.help == help_text(config, name)
        words = default_words(config, name)
        if words and not isinstance(default[name], bool):
            assert f"default {words}".replace("%", "%%") in action.help, name
        assert meta.help.rstrip(")").replace("%", "%%") in action.help, name
        if meta.choices:
            assert list(action.choices) == list(meta.choices), name
        if command == "predict":  # bone predict's defaults are the config's; bone fit's are "not given"
            assert action.default == default.get(name) and action.required == (name not in default), name


def test_fit_choices_are_the_engine_registries_and_enums():
    from bone_apps.core.data.normalize import NormMethod
    from bone_apps.core.data.sampling import Dims
    from bone_apps.core.fit.config import FitConfig, Precision
    from bone_apps.core.model.losses import LOSSES, OPTIMIZERS, SCHEDULERS
    from bone_apps.core.options import described

    options = described(FitConfig)
    assert options["loss"].choices == tuple(LOSSES) and options["optimizer"].choices == tuple(OPTIMIZERS)
    assert options["scheduler"].choices == tuple(SCHEDULERS)
    for name, enum in (("dims", Dims), ("norm", NormMethod), ("precision", Precision)):
        assert options[name].choices == tuple(m.value for m in enum)


def test_enumerated_fields_are_enums_parsed_once(tmp_path):
    from bone_apps.core.data.normalize import NormMethod
    from bone_apps.core.data.sampling import Dims
    from bone_apps.core.fit.config import FitConfig, Precision

    config = FitConfig(out="o", data="d", dims="2.5D", norm="MINMAX", precision="bf16")
    assert (config.dims, config.norm, config.precision) == (Dims.D25, NormMethod.MINMAX, Precision.BF16)
    assert config.to_dict()["dims"] == "2.5d" and type(config.to_dict()["norm"]) is str
    assert FitConfig.load(config.save(tmp_path / "c.json")) == config
    assert f"{config.precision}" == "bf16"
    assert PredictConfig(scans=(tmp_path,), weights="w", out="o", blend="GAUSSIAN",
                         out_format="zarr").to_dict()["blend"] == "gaussian"


def test_fit_defaults_come_from_the_config(tmp_path):
    """With no flags but --out and --data, `bone fit` builds FitConfig's defaults (Easy mode)."""
    from bone_apps.cli import build_parser
    from bone_apps.cli.fit import build_config
    from bone_apps.core.fit.config import FitConfig

    args = build_parser().parse_args(["fit", "--out", str(tmp_path / "o"), "--data", str(tmp_path)])
    config = build_config(args)
    assert config == FitConfig(out=str(tmp_path / "o"), data=str(tmp_path), easy=True)
    args = build_parser().parse_args(["fit", "--out", "o", "--data", "d", "--norm", "minmax",
                                      "--no-profile", "--precision", "fp32"])
    config = build_config(args)
    assert (config.norm.value, config.profile, config.precision.value, config.easy) == ("minmax", False,
                                                                                       "fp32", False)


def test_the_resume_rule_is_the_fields_and_the_help_says_it():
    from bone_apps.core.fit.config import RESUMABLE_CHANGES, FitConfig
    from bone_apps.core.options import described

    options = described(FitConfig)
    assert RESUMABLE_CHANGES == {name for name, meta in options.items() if meta.resumable}
    assert {"device", "workers", "out"} <= RESUMABLE_CHANGES and "patch" not in RESUMABLE_CHANGES
    help_ = _actions("fit")["resume"].help
    assert all(options[name].flag in help_ for name in RESUMABLE_CHANGES - {"out"})


@pytest.mark.parametrize(("make", "flag", "label"), [
    (lambda: __import__("bone_apps.core.fit.config", fromlist=["FitConfig"]).FitConfig(out="o", norm="l2"),
     "--norm 'l2' is unknown", "\u201cNormalization\u201d 'l2' is unknown"),
    (lambda: __import__("bone_apps.core.fit.config", fromlist=["FitConfig"]).FitConfig(
        out="o", data="d", patch=0).validate(), "--patch must be at least 1", "\u201cPatch size\u201d must"),
    (lambda: PredictConfig(scans=("s",), weights="w", out="o", threshold=2),
     "--threshold 2 is outside", "\u201cConfidence threshold\u201d 2 is outside"),
])
def test_errors_carry_the_field_shown_as_flag_or_label(make, flag, label):
    import pickle

    from bone_apps.core.errors import OptionError
    from bone_apps.dlfit.tips import plain_options
    from bone_apps.dlpred.bridge import plain_message

    with pytest.raises(OptionError) as info:
        make()
    error = info.value
    assert str(error).startswith(flag) and error.shown(as_label=True).startswith(label)
    assert error.field and "{" not in str(error) and "--" not in error.shown(as_label=True)
    assert str(error).count(". ") == 0 and str(error).endswith(".")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.field, str(again)) == (type(error), error.field, str(error))
    window = plain_options if isinstance(error, FitConfigError) else plain_message
    assert window(error) == error.shown(as_label=True)


def test_windows_name_options_by_the_fields_labels(qtbot):
    from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel

    from bone_apps.core.fit.config import FitConfig
    from bone_apps.core.options import described
    from bone_apps.dlfit.options import AdvancedOptions
    from bone_apps.ui.settings import AppSettings

    form = AdvancedOptions(AppSettings("options-once-test"))
    qtbot.addWidget(form)
    options = described(FitConfig)
    for name in ("dims", "norm", "loss", "optimizer", "scheduler", "precision"):
        box = form.w[name]
        assert isinstance(box, QComboBox)
        assert [box.itemData(i) for i in range(box.count())] == list(options[name].choices), name
    labels = {label.text() for label in form.findChildren(QLabel)}
    for name in ("seed", "dims", "patch", "norm", "encoder", "init", "lr", "batch", "workers"):
        assert options[name].label + ":" in labels, name
    assert form.findChildren(QFormLayout)


def test_dlfit_value_labels_are_for_the_fields_choices():
    from bone_apps.core.fit.config import FitConfig
    from bone_apps.core.options import described
    from bone_apps.dlfit.options import LABELS

    options = described(FitConfig)
    for name in ("dims", "norm", "precision", "loss", "optimizer", "scheduler"):
        assert list(LABELS[name]) == list(options[name].choices), name


@pytest.mark.parametrize("command", [["fit", "--out", "o", "--data", "d"], ["predict", "s", "--weights", "w",
                                                                            "--out", "o"], ["iou", "a", "b"]])
def test_fit_predict_and_iou_take_every_device_form(command):
    from bone_apps.cli import build_parser

    for text in ("auto", "cpu", "cuda", "cuda:1", "cuda:0,1", "cuda:all"):
        assert build_parser().parse_args([*command, "--device", text]).device == text


def test_fit_config_checks_the_device_with_the_shared_grammar():
    from bone_apps.core.fit.config import FitConfig

    FitConfig(out="o", data="d", device="cuda:all").validate()
    with pytest.raises(FitConfigError, match="cuda:0,1 or cuda:all"):
        FitConfig(out="o", data="d", device="gpu").validate()


def test_dlpred_form_labels_are_the_fields_labels(qtbot):
    from PySide6.QtWidgets import QCheckBox, QLabel

    from bone_apps.core.options import described
    from bone_apps.dlpred.options import OptionsBox

    class Blank:
        def get(self, key: str, default: str = "") -> str:
            return default

        def set(self, key: str, value: str) -> None:
            pass

    box = OptionsBox(Blank(), [("Automatic", "auto"), ("CPU", "cpu")])
    qtbot.addWidget(box)
    options = described(PredictConfig)
    shown = {w.text().replace("&", "") for kind in (QLabel, QCheckBox) for w in box.findChildren(kind)}
    for name in ("device", "chunk", "chunk_depth", "overlap", "threshold", "blend", "batch"):
        assert options[name].label + ":" in shown, name
    assert {options["tta"].label, options["probabilities"].label} <= shown
    assert [box.blend.itemData(i) for i in range(box.blend.count())] == list(options["blend"].choices)


def _fit_errors():
    from bone_apps.core.data.split import split_scans
    from bone_apps.core.evaluate.folds import make_folds
    from bone_apps.core.evaluate.runs import experiment_pairs
    from bone_apps.core.fit.config import FitConfig
    from bone_apps.core.fit.prepare import check_patch_geometry

    yield lambda: split_scans(["a", "b"], val_ids=["c"]), "--val-scans names c"
    yield lambda: split_scans(["a", "b"], val_ids=["a", "b"]), "--val-scans names every scan"
    yield lambda: make_folds(["a", "b", "c", "d"], 2, val_scans=["x"]), "--val-scans names x"
    yield lambda: experiment_pairs(FitConfig(out="o")), "give --data ROOT or --pair SCAN MASK"
    yield (lambda: check_patch_geometry(FitConfig(out="o", dims="3d", patch=16, patch_depth=16), 16),
           "use --patch 32 or --patch-depth 32")


def _predict_errors(tmp_path):
    from bone_apps.core.predict.output_plan import plan_outputs

    scans = (str(tmp_path / "a"), str(tmp_path / "b"))
    yield (lambda: plan_outputs(PredictConfig(scans=scans[:1], weights="w", out=tmp_path / "o.h5:/x"),
                                ["b"]), "give --out the HDF5 file alone")
    yield (lambda: plan_outputs(PredictConfig(scans=scans, weights="w", out=tmp_path / "o.tif"), ["b"]),
           "give --out a folder")


def test_windows_plain_messages_name_labels_not_flags(tmp_path):
    """Core errors name options as {field}s: the CLI's text keeps the flag, the windows show the
    label without rewriting any text; a refused overwrite (no config at hand) names the checkbox."""
    from bone_apps.core.errors import OptionError, OutputExistsError
    from bone_apps.core.io.outputs import check_target
    from bone_apps.dlfit.tips import plain_options
    from bone_apps.dlpred.bridge import plain_message

    cases = [(plain_message, *c) for c in _predict_errors(tmp_path)]
    cases += [(plain_options, *c) for c in _fit_errors()]
    for window, make, cli in cases:
        with pytest.raises(OptionError) as info:
            make()
        error = info.value
        assert cli in str(error) and "{" not in str(error), str(error)
        plain = window(error)
        assert plain == error.shown(as_label=True) and "--" not in plain and "\u201c" in plain, plain
        assert error.field is not None
    assert "use \u201cPatch size\u201d 32 or \u201cPatch depth\u201d 32" in plain  # the last fit case
    (tmp_path / "taken.tif").write_bytes(b"")
    with pytest.raises(OutputExistsError) as info:
        check_target(tmp_path / "taken.tif", overwrite=False)
    assert "(--overwrite)" in str(info.value)
    assert plain_message(info.value).endswith(
        "(tick \u201cReplace an existing output\u201d).") and "--" not in plain_message(info.value)



def test_an_option_error_names_flags_whatever_was_imported_before():
    import subprocess
    import sys

    code = ("from bone_apps.core.data.split import split_scans\n"
            "try:\n    split_scans(['a', 'b'], val_ids=['a', 'b'])\n"
            "except Exception as exc:\n    print(exc)\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.startswith("--val-scans names every scan"), shown
