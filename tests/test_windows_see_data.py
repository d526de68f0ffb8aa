"""The windows as users live in them at 1280x800: nothing cut off, the data on show, one hand-over."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

pytest.importorskip("PySide6")
torch = pytest.importorskip("torch")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.dlfit.pairs import CHECK  # noqa: E402
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402

SIZE = (1280, 800)


@pytest.fixture
def dlfit(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    win = DLFitWindow(AppSettings(f"dlfit-see-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(win)
    win.resize(*SIZE)
    win.show()
    yield win
    win.close()


@pytest.fixture
def dlpred(qtbot):
    win = DLPredWindow(AppSettings(f"dlpred-see-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(win)
    win.resize(*SIZE)
    win.show()
    yield win
    win.close()


def _wait_checks(qtbot, window) -> None:
    qtbot.waitUntil(lambda: not window.pairs.is_checking(), timeout=20000)


def test_long_check_text_wraps_into_a_taller_row(dlfit, qtbot, sample_root, tmp_path, artifacts_dir):
    pairs = dlfit.pairs
    write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
    pairs.add_pair(sample_root / "scans" / "bone_00", sample_root / "masks" / "bone_00")
    pairs.add_pair(sample_root / "scans" / "bone_00", tmp_path / "short")
    _wait_checks(qtbot, dlfit)
    qtbot.waitUntil(lambda: pairs.table.rowHeight(1) > pairs.table.rowHeight(0))
    table = pairs.table
    item = table.item(1, CHECK)
    assert item.text().startswith("✖") and item.text() in item.toolTip()
    # The whole problem fits the cell: its wrapped height is no more than the row's.
    width = table.columnWidth(CHECK) - 8
    needed = table.fontMetrics().boundingRect(0, 0, width, 10000, Qt.TextFlag.TextWordWrap,
                                              item.text()).height()
    assert table.rowHeight(1) >= needed
    dlfit.grab().save(str(artifacts_dir / "see_dlfit_pairs_wrapped.png"))


def test_dlpred_left_column_widens_and_path_fields_show_full_paths(dlpred, qtbot, tmp_path,
                                                                  artifacts_dir):
    long_path = tmp_path / ("a_rather_long_folder_name_for_a_scan_" * 3) / "scan_0001"
    dlpred.scan.set_path(long_path)
    assert str(long_path) in dlpred.scan.edit.toolTip()
    splitter = dlpred.splitter
    left, right = splitter.sizes()
    splitter.moveSplitter(left + 200, 1)
    qtbot.waitUntil(lambda: splitter.sizes()[0] >= left + 150)
    assert splitter.sizes()[1] < right
    dlpred.grab().save(str(artifacts_dir / "see_dlpred_wide_left.png"))
    QApplication.processEvents()


def _finished_run(out, sample_root):
    """The files DLPred needs from a finished fit: best weights and a completed summary."""
    from bone_apps.core.model.models import build_model
    from bone_apps.core.model.weights import save_weights

    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", in_channels=1, classes=3)
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": ["background", "bone", "pores"], "patch_size": 64, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": 32, "best_epoch": 1,
            "metrics": {"val_iou": 0.5}, "fit_config": {"pairs": [], "epochs": 1}}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "model.pth", model, meta)
    (out / "summary.json").write_text(json.dumps({"status": "completed"}))
    return out / "model.pth"


def test_predict_with_this_model_opens_dlpred_with_the_weights(dlfit, qtbot, sample_root, tmp_path,
                                                               artifacts_dir):
    out = tmp_path / "run"
    dlfit.out.set_path(out)
    assert not dlfit.predict_button.isEnabled()  # no run here yet
    model = _finished_run(out, sample_root)
    dlfit.runner.finished.emit(None)  # the fit ended: the button follows the folder
    assert dlfit.predict_button.isEnabled()
    qtbot.mouseClick(dlfit.predict_button, Qt.MouseButton.LeftButton)
    pred = dlfit.dlpred_window
    assert pred is not None and pred.isVisible()
    try:
        assert pred.weights.path() == model
        qtbot.waitUntil(lambda: not pred.inputs.busy(), timeout=20000)
        assert "Unet with resnet18" in pred.model_info.text()
        # Pressed again, the same window comes forward instead of a second one.
        qtbot.mouseClick(dlfit.predict_button, Qt.MouseButton.LeftButton)
        assert dlfit.dlpred_window is pred
        pred.resize(*SIZE)
        pred.grab().save(str(artifacts_dir / "see_dlpred_from_dlfit.png"))
    finally:
        pred.close()
    # Reopening the folder of a finished run offers the hand-over too.
    dlfit.out.set_path(tmp_path)
    assert not dlfit.predict_button.isEnabled()
    dlfit.out.set_path(out)
    assert dlfit.predict_button.isEnabled()


def _pixels(view) -> bytes:
    image = view.canvas.image
    return bytes(image.constBits()[: image.sizeInBytes()])


def test_slice_view_contrast_black_white_and_auto(dlpred, qtbot, sample_root, artifacts_dir):
    from bone_apps.core.io.volume import open_volume

    dlpred.scan.set_path(sample_root / "scans" / "bone_00")
    qtbot.waitUntil(lambda: not dlpred.inputs.busy() and dlpred.preview.volume is not None,
                    timeout=20000)
    view = dlpred.preview
    assert view.contrast.isEnabled()
    view.set_z(5)
    before = _pixels(view)
    lo, hi = view.contrast.values()
    view.contrast.high.setValue(hi + (hi - lo))  # twice the range: a darker picture
    after = _pixels(view)
    assert after != before
    assert np.frombuffer(after, np.uint8).mean() < np.frombuffer(before, np.uint8).mean()
    qtbot.mouseClick(view.contrast.auto_button, Qt.MouseButton.LeftButton)
    plane = open_volume(sample_root / "scans" / "bone_00").read_slice(5).astype(np.float64)
    expected = np.percentile(plane, (0.5, 99.5))
    assert view.contrast.values() == pytest.approx(tuple(expected), abs=0.5)
    assert _pixels(view) != after
    dlpred.grab().save(str(artifacts_dir / "see_slice_view_contrast.png"))


def test_selecting_a_pair_shows_its_scan_with_the_mask(dlfit, qtbot, sample_root, tmp_path, artifacts_dir):
    pairs = dlfit.pairs
    assert pairs.add_dataset_root(sample_root) == 4
    write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
    pairs.add_pair(sample_root / "scans" / "bone_00", tmp_path / "short")
    _wait_checks(qtbot, dlfit)
    view = dlfit.pair_view.view
    qtbot.mouseClick(pairs.table.viewport(), Qt.MouseButton.LeftButton,
                     pos=pairs.table.visualRect(pairs.table.model().index(2, 0)).center())
    assert dlfit.side_tabs.currentWidget() is dlfit.pair_view
    assert view.volume is not None and view.volume.shape[0] == 16
    assert view.z_slider.maximum() == 15
    view.set_z(8)
    assert view.labels_shown and "bone_02" in dlfit.pair_view.title.text()
    dlfit.grab().save(str(artifacts_dir / "see_dlfit_selected_pair.png"))
    # A mask of another size: the scan alone, and the title says why.
    pairs.table.selectRow(4)
    assert view.volume.shape[0] == 16 and not view.labels_shown
    assert "no mask" in dlfit.pair_view.title.text()
