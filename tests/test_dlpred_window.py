"""The DLPred window driven like a user would: choose a scan and weights, predict, watch, stop, score."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("PySide6")
torch = pytest.importorskip("torch")

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox  # noqa: E402

from bone_apps.core.data.normalize import StatsProgress  # noqa: E402
from bone_apps.core.io.volume import open_volume  # noqa: E402
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.core.model.models import build_model  # noqa: E402
from bone_apps.core.model.weights import save_weights  # noqa: E402
from bone_apps.core.predict.reports import ScanStarted, SliceProgress  # noqa: E402
from bone_apps.dlpred import bridge  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402

CLASS_NAMES = ["background", "bone", "pores"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, sample_root):
    """A tiny randomly initialised 2D U-Net saved as a complete weights file (no fitting)."""
    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", in_channels=1, classes=3)
    pairs = [[str(sample_root / "scans" / f"bone_0{i}"), str(sample_root / "masks" / f"bone_0{i}")]
             for i in range(3)]
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": CLASS_NAMES, "patch_size": 64, "context": 0, "patch_depth": 1,
            "norm": "zscore", "required_multiple": 32, "best_epoch": 2,
            "metrics": {"val_iou": 0.5}, "fit_config": {"pairs": pairs, "epochs": 2, "batch": 4,
                                                        "lr": 0.001}}
    return save_weights(tmp_path_factory.mktemp("weights") / "tiny.pth", model, meta)


@pytest.fixture
def window(qtbot):
    win = DLPredWindow()
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    if win.iou_window is not None:
        win.iou_window.close()
    win.close()  # stops and waits for every worker


def _choose(window, qtbot, scan, weights, output=None):
    window.scan.set_path(scan)
    window.weights.set_path(weights)
    if output is not None:
        window.output.set_path(output)
    qtbot.waitUntil(lambda: not window.inputs.busy(), timeout=20000)


def _visible_dialogs():
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def test_predict_shows_slices_as_written_report_and_hands_over_to_iou(
        window, qtbot, sample_root, weights_file, tmp_path, artifacts_dir):
    scan, mask = sample_root / "scans" / "bone_03", sample_root / "masks" / "bone_03"
    _choose(window, qtbot, scan, weights_file)
    # The output is suggested beside the dataset, never inside scans/; the weights' metadata is on show.
    assert window.output.path() == sample_root / "predictions" / "bone_03_labels"
    info = window.model_info.text()
    assert "Unet with resnet18" in info and "background, bone, pores" in info
    assert "3 scan/mask pair(s): bone_00, bone_01, bone_02" in info
    assert window.preview.volume is not None and not window.preview.labels_shown
    output = tmp_path / "bone_03_labels"
    window.output.set_path(output)

    seen: list[int] = []
    slice_ready = window.preview.slice_ready
    window.preview.slice_ready = lambda z: (seen.append(z), slice_ready(z))
    ticks: list[float] = []  # the GUI thread must keep processing events during the run
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(10)
    qtbot.mouseClick(window.predict_button, Qt.MouseButton.LeftButton)
    assert not window.predict_button.isEnabled() and window.stop_button.isEnabled()
    qtbot.waitUntil(lambda: window.worker is None, timeout=45000)
    timer.stop()

    assert window.last_error == "" and window.report is not None
    gaps = np.diff(ticks)
    assert len(ticks) > 5 and gaps.max() < 1.0, f"GUI thread blocked for {gaps.max():.2f} s"
    assert seen == list(range(16))  # every slice appeared in the preview as it was written
    labels = open_volume(output, role="mask")
    assert labels.shape == (16, 64, 64)
    assert labels.slice_names == open_volume(scan).slice_names
    stack = labels.read_slab(0, 16)
    assert set(np.unique(stack)) <= {0, 1, 2}
    assert window.output_path == output and not list(tmp_path.glob(".*"))  # no temporary left
    assert window.progress.value() == window.progress.maximum() == 16
    assert window.rate_label.text().startswith("Done: 16 slices")

    # The preview shows the scan with the labels written, on any slice.
    window.preview.set_z(8)
    assert window.preview.labels_shown
    np.testing.assert_array_equal(window.live(8), stack[8])
    window.preview.opacity.setValue(70)
    assert window.preview.labels_shown
    preview = window.preview
    preview.zoom.setCurrentIndex(preview.zoom.findData(4.0))
    assert (preview.canvas.width(), preview.canvas.height()) == (256, 256)
    preview._step_zoom(1)  # Ctrl + mouse wheel or Ctrl++
    assert preview.zoom.currentData() == 8.0 and preview.canvas.width() == 512
    preview.zoom.setCurrentIndex(0)  # Fit: the canvas fills the view again, the slice all in it
    assert preview.canvas.size() == preview.scroll.viewport().size()
    target = preview.canvas.target()
    assert target.width() == target.height() == min(preview.canvas.width(), preview.canvas.height())

    # The report's numbers are in the table and the histogram.
    report = window.report
    assert report.counts == [int(np.sum(stack == c)) for c in range(3)]
    rows = dict(bridge.report_rows(report))
    assert window.results.value("1: bone") == rows["1: bone"]
    assert window.results.value("Mean winning probability") == f"{report.mean_confidence:.4f}"
    assert window.results.value("Device") == "cpu"
    assert window.results.value("Peak RAM").endswith("MiB") or "GiB" in window.results.value("Peak RAM")
    assert sum(report.histogram) == 16 * 64 * 64
    assert window.results.histogram.marker == pytest.approx(0.5)
    window.grab().save(str(artifacts_dir / "dlpred_window.png"))

    # Hand-over: the IoU window opens with this output as the prediction and scores it.
    assert window.iou_button.isEnabled()
    qtbot.mouseClick(window.iou_button, Qt.MouseButton.LeftButton)
    iou = window.iou_window
    assert iou is not None and iou.isVisible()
    assert iou.prediction.path() == output
    assert iou.reference.path() == mask  # found by the dataset layout scans/<id> -> masks/<id>
    assert iou.class_names.text() == ",".join(CLASS_NAMES)
    qtbot.mouseClick(iou.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: iou.result is not None and iou.worker is None, timeout=30000)
    reference = open_volume(mask, role="mask").read_slab(0, 16)
    bone = iou.result.classes[1]
    union = np.sum((reference == 1) | (stack == 1))
    expected = np.sum((reference == 1) & (stack == 1)) / union if union else None
    assert bone.iou == pytest.approx(expected)
    iou.grab().save(str(artifacts_dir / "dlpred_iou_handover.png"))


def test_stop_leaves_nothing_under_the_final_name(window, qtbot, sample_root, weights_file, tmp_path,
                                                  artifacts_dir):
    # A longer scan and one small chunk per batch, so the run is stopped well before its end.
    scan = open_volume(sample_root / "scans" / "bone_02").read_slab(0, 16)
    write_volume(tmp_path / "long", np.tile(scan, (10, 1, 1)))
    output = tmp_path / "long_labels"
    _choose(window, qtbot, tmp_path / "long", weights_file, output)
    window.options.batch.setValue(1)
    window.options.chunk.setValue(32)
    window.predict()
    qtbot.waitUntil(lambda: window.progress.value() >= 2, timeout=30000)
    assert window.preview.labels_shown  # the newest slice is on show while the run goes on
    window.activateWindow()
    qtbot.keyClick(window.predict_button, Qt.Key.Key_Escape)  # Esc stops, like the Stop button
    qtbot.waitUntil(lambda: window.worker is None, timeout=30000)

    assert window.progress.value() < 160
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long"]  # no half-written stack either
    assert window.last_error == "" and not _visible_dialogs()  # a stop is not an error
    assert window.report is None and not window.iou_button.isEnabled()
    assert "Stopped" in window.statusBar().currentMessage()
    assert window.predict_button.isEnabled() and not window.stop_button.isEnabled()
    window.grab().save(str(artifacts_dir / "dlpred_stopped.png"))


@pytest.mark.parametrize("case", ["foreign_weights", "missing_scan", "existing_output", "nothing"])
def test_bad_input_shows_one_dialog(window, qtbot, sample_root, weights_file, tmp_path, case,
                                    artifacts_dir):
    scan, weights, output = sample_root / "scans" / "bone_00", weights_file, tmp_path / "out"
    if case == "foreign_weights":
        weights = tmp_path / "foreign.pth"
        torch.save({"model": torch.zeros(3)}, weights)
    elif case == "missing_scan":
        scan = tmp_path / "no-such-scan"
    elif case == "existing_output":
        output.mkdir()
        (output / "keep.txt").write_text("an earlier result")
    if case == "nothing":
        for picker in (window.scan, window.weights, window.output):
            picker.edit.clear()
        qtbot.waitUntil(lambda: not window.inputs.busy())
    else:
        _choose(window, qtbot, scan, weights, output)
    qtbot.mouseClick(window.predict_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.last_error != "" and window.worker is None, timeout=30000)

    dialogs = _visible_dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == window.last_error
    assert "Traceback" not in window.last_error
    expected = {"foreign_weights": "not a bone_apps weights file", "missing_scan": "does not exist",
                "existing_output": "already exists", "nothing": "Choose a scan"}[case]
    assert expected in window.last_error
    if case == "foreign_weights":  # already flagged beside the field when it was chosen
        assert expected in window.model_info.text() and "b00020" in window.model_info.styleSheet()
        window.grab().save(str(artifacts_dir / "dlpred_bad_weights.png"))
        dialogs[0].grab().save(str(artifacts_dir / "dlpred_error_dialog.png"))
    if case == "existing_output":  # the advice names the window's field, not a command option
        assert "Replace an existing output" in window.last_error and "--" not in window.last_error
        assert (output / "keep.txt").read_text() == "an earlier result"
    else:
        assert not output.exists()
    dialogs[0].close()
    assert window.predict_button.isEnabled()


def test_every_option_explains_itself_and_is_reachable_by_keyboard(window):
    fields = [window.scan.edit, window.weights.edit, window.output.edit, window.overwrite,
              window.predict_button, window.stop_button, window.iou_button,
              window.preview.z_slider, window.preview.opacity, window.preview.zoom,
              window.preview.follow]
    fields += [getattr(window.options, name) for name in (
        "device", "chunk", "chunk_depth", "overlap", "threshold", "blend", "batch", "tta",
        "probabilities", "defaults_button")]
    for widget in fields:
        assert len(widget.toolTip()) > 20, widget
        assert widget.focusPolicy() != Qt.FocusPolicy.NoFocus, widget
    # Every labelled field has a mnemonic (Alt+letter) leading to it, and no letter is used twice.
    letters = []
    for label in window.findChildren(QLabel):
        buddy = label.buddy()
        if buddy is not None and buddy.focusPolicy() != Qt.FocusPolicy.NoFocus \
                and label.isVisibleTo(window):
            assert "&" in label.text(), label.text()
            letters.append(label.text()[label.text().index("&") + 1].lower())
    for button in [window.predict_button, window.iou_button, window.overwrite, window.preview.follow,
                   window.options.tta, window.options.probabilities, window.options.defaults_button]:
        letters.append(button.text()[button.text().index("&") + 1].lower())
    assert len(letters) == len(set(letters)) > 15
    # Defaults are the paper's, and restoring them works after a change.
    window.options.threshold.setValue(0.9)
    window.options.restore_defaults()
    v = window.options.values()
    assert (v.chunk, v.overlap, v.threshold, v.blend, v.batch) == (512, 0.25, 0.5, "mean", 0)


def test_progress_text_rate_and_time_left(tmp_path):
    now = [100.0]
    tracker = bridge.Tracker(clock=lambda: now[0])
    assert "intensities" in tracker.update(StatsProgress(0, 1)).text
    start = tracker.update(ScanStarted(0, 1, tmp_path, tmp_path / "o", (40, 8, 8), 4, "cpu"))
    assert (start.done, start.total) == (0, 40) and "cpu" in start.text
    labels = np.zeros((8, 8), np.uint8)
    tracker.update(SliceProgress(0, 0, 40))
    now[0] += 5.0
    step = tracker.update(SliceProgress(0, 10, 40, labels))
    assert step.z == 9 and step.labels is labels
    assert step.text == "10 of 40 slices · 2 slices/s · 15.0 s left"
    assert bridge.duration_text(3725) == "1 h 02 min"
    assert bridge.default_output(tmp_path / "scan.ome.tif") == tmp_path / "scan_labels.tif"
    assert bridge.default_output(tmp_path / "scan") == tmp_path / "scan_labels"


def test_3d_model_on_a_multipage_scan_writes_next_to_it(window, qtbot, sample_root, tmp_path):
    torch.manual_seed(0)
    model = build_model("3d", "BasicUNet", "tiny", in_channels=1, classes=3, patch_depth=16)
    weights = save_weights(tmp_path / "tiny3d.pth", model, {
        "dims": "3d", "arch": "BasicUNet", "encoder": "tiny", "in_channels": 1, "classes": 3,
        "class_names": CLASS_NAMES, "patch_size": 32, "context": 0, "patch_depth": 16,
        "norm": "minmax", "required_multiple": 16})
    scan = tmp_path / "stack.ome.tif"
    write_volume(scan, open_volume(sample_root / "scans" / "bone_01").read_slab(0, 16))
    _choose(window, qtbot, scan, weights)
    assert window.output.path() == tmp_path / "stack_labels.tif"  # a file, as the scan is one
    assert window.options.chunk_depth.isEnabled() and window.options.chunk_depth.value() == 16
    assert "3d" in window.model_info.text()
    window.options.chunk.setValue(32)
    assert window.options.chunk_depth.singleStep() == 16  # the network's required multiple
    window.options.chunk_depth.setValue(32)
    window.predict()
    qtbot.waitUntil(lambda: window.worker is None, timeout=45000)
    assert window.last_error == "" and window.report is not None
    assert window.report.config["chunk_depth"] == 32 and window.report.config["chunk"] == 32
    assert window.report.scans[0].window == (16, 32, 32)  # deeper than the scan: shrunk to it
    assert open_volume(tmp_path / "stack_labels.tif", role="mask").shape == (16, 64, 64)
    window.preview.set_z(3)
    assert window.preview.labels_shown
