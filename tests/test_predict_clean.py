"""`bone predict` with a clean-up: the saved labels are cleaned, and the report says what changed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from test_predict import config, make_weights, read, scan_of

from bone_apps.cli import main
from bone_apps.core.model.weights import save_weights
from bone_apps.core.predict.cleanup import CleanError, CleanOptions, clean_labels
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.reports import PredictReport, ScanCleaning, ScanResult
from bone_apps.core.predict.segment import load_model, predict, run_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MIN_ISLAND = 20


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "model.pth", "2d", seed=1)


@pytest.fixture(scope="module")
def plain(sample_root, weights, tmp_path_factory):
    """A prediction without clean-up: (labels, report)."""
    out = tmp_path_factory.mktemp("plain") / "labels"
    report = run_predict(config(scan_of(sample_root), weights, out, chunk=64, overlap=0.0))
    return read(out), report


def _small_pieces(labels: np.ndarray, label: int) -> int:
    pieces, count = ndimage.label(labels == label, structure=np.ones((3, 3, 3), bool))
    return int(np.sum(np.bincount(pieces.reshape(-1))[1:] < MIN_ISLAND))


def test_clean_removes_the_islands_a_plain_prediction_keeps(sample_root, weights, plain, tmp_path):
    labels, plain_report = plain
    assert plain_report.config["clean"] is None and plain_report.clean_summary() is None
    assert plain_report.to_dict()["totals"]["clean"] is None and "clean-up" not in plain_report.text()
    assert _small_pieces(labels, 1) > 0 and _small_pieces(labels, 2) > 0  # speckle to remove

    options = CleanOptions(min_island=MIN_ISLAND, fill_holes=5)
    events = []
    job = predict(config(scan_of(sample_root), weights, tmp_path / "clean", chunk=64, overlap=0.0,
                         clean=options, report=tmp_path / "report.json"))
    while True:
        try:
            events.append(next(job))
        except StopIteration as done:
            report: PredictReport = done.value
            break
    cleaned = read(tmp_path / "clean")

    # The output is the plain labels cleaned as `bone clean` would clean them.
    expected, expected_report = clean_labels(labels, options)
    np.testing.assert_array_equal(cleaned, expected)
    assert _small_pieces(cleaned, 1) == _small_pieces(cleaned, 2) == 0
    assert any(isinstance(e, ScanCleaning) for e in events)

    # The report: counts of what was saved, the counts before, the change and the steps.
    scan = report.scans[0]
    assert list(scan.counts) == [int(np.sum(cleaned == c)) for c in range(3)] == report.counts
    assert scan.counts_before_clean == tuple(plain_report.counts)
    change = [int(np.sum(cleaned == c)) - int(np.sum(labels == c)) for c in range(3)]
    assert scan.clean_change == change == report.clean_change and sum(change) == 0
    assert change[1] < 0 and change[2] < 0
    assert scan.clean_steps == tuple(expected_report.steps)
    assert f"{report.clean_summary()['voxels_changed']:,} voxels changed" in report.text()
    assert "islands under 20 voxels removed; holes under 5 voxels filled" in report.text()

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["config"]["clean"] == {"largest": [], "min_island": MIN_ISLAND, "fill_holes": 5}
    totals = data["totals"]["clean"]
    assert totals["change"] == change and totals["counts_before"] == plain_report.counts
    assert totals["voxels_changed"] == expected_report.voxels_changed > 0
    steps = data["scans"][0]["clean_steps"]
    assert {(s["operation"], s["label"]) for s in steps} >= {("island", 1), ("island", 2)}
    # A report read back (as torchrun ranks exchange them) keeps the steps.
    assert ScanResult.from_dict(data["scans"][0]).clean_steps == scan.clean_steps


def test_clean_options_are_checked_and_nothing_chosen_means_off(sample_root, weights, tmp_path):
    base = {"scans": (scan_of(sample_root),), "weights": weights, "out": tmp_path / "o"}
    assert PredictConfig(**base).clean is None
    assert PredictConfig(**base, clean=CleanOptions()).clean is None
    assert PredictConfig(**base, clean={"largest": [1], "min_island": 0}).clean == CleanOptions(largest=(1,))
    with pytest.raises(CleanError, match="0 or more voxels"):
        PredictConfig(**base, clean=CleanOptions(min_island=-5))


def test_label_values_of_the_output_are_what_is_cleaned(sample_root, tmp_path):
    """A model writing 0/128/255: LABEL is the written value, counts stay per class."""
    model, meta, _spec = load_model(make_weights(tmp_path / "m.pth", "2d", seed=1))
    weights = save_weights(tmp_path / "values.pth", model, {**meta, "label_values": [0, 128, 255]})
    report = run_predict(config(scan_of(sample_root), weights, tmp_path / "out", chunk=64, overlap=0.0,
                                clean=CleanOptions(largest=(255,))))
    out = read(tmp_path / "out")
    assert set(np.unique(out)) <= {0, 128, 255}
    pieces = ndimage.label(out == 255, structure=np.ones((3, 3, 3), bool))[1]
    assert pieces == 1
    assert list(report.counts) == [int(np.sum(out == v)) for v in (0, 128, 255)]
    assert report.clean_change[2] < 0 and [s.label for s in report.scans[0].clean_steps] == [255]


def test_cli_clean_options_run_the_clean_up_and_say_so(sample_root, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    code = main(["predict", str(scan_of(sample_root)), "--weights", str(weights), "--out",
                 str(tmp_path / "labels"), "--device", "cpu", "--chunk", "64", "--overlap", "0",
                 "--clean-min-island", str(MIN_ISLAND), "--clean-largest", "1",
                 "--report", str(tmp_path / "r.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "clean-up (largest piece of label 1 kept; islands under 20 voxels removed)" in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["config"]["clean"] == {"largest": [1], "min_island": MIN_ISLAND, "fill_holes": 0}
    labels = read(tmp_path / "labels")
    assert ndimage.label(labels == 1, structure=np.ones((3, 3, 3), bool))[1] == 1

    code = main(["predict", str(scan_of(sample_root)), "--weights", str(weights), "--out",
                 str(tmp_path / "bad"), "--clean-fill-holes", "-3"])
    assert code != 0
    err = capsys.readouterr().err
    assert "0 or more voxels" in err and "Traceback" not in err and not (tmp_path / "bad").exists()
    assert "--clean-min-island" in _help(capsys)


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    return capsys.readouterr().out
