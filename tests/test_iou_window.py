"""The IoU window driven like a user would: pick masks, compute, read the table, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from bone_apps.core.io.volume import open_volume  # noqa: E402
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402


@pytest.fixture
def window(qtbot):
    win = IoUWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.worker is not None:
        win.worker.stop()
        win.worker.wait()


def _perturbed_prediction(sample_root, tmp_path):
    reference = sample_root / "masks" / "bone_01"
    mask = open_volume(reference, role="mask").read_slab(0, 16)
    prediction = mask.copy()
    prediction[8:, :, ::5] = 0  # the second half of the stack loses bone and pores
    write_volume(tmp_path / "pred", prediction)
    return reference, tmp_path / "pred", mask, prediction


def test_compute_fills_table_plot_and_exports(window, qtbot, sample_root, tmp_path, artifacts_dir):
    reference, prediction, mask, pred = _perturbed_prediction(sample_root, tmp_path)
    window.reference.set_path(reference)
    window.prediction.set_path(prediction)
    window.class_names.setText("background,bone,pores")
    qtbot.mouseClick(window.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.result is not None and window.worker is None, timeout=30000)

    assert window.table.rowCount() == 3
    assert [window.table.item(r, 0).text() for r in range(3)] == [
        "0: background", "1: bone", "2: pores"]
    bone_iou = float(window.table.item(1, 1).text())
    inter = np.sum((mask == 1) & (pred == 1))
    union = np.sum((mask == 1) | (pred == 1))
    assert bone_iou == pytest.approx(inter / union, abs=1e-4)
    assert f"{window.result.mean_iou:.4f}" in window.mean_label.text()
    curve = window.plot.series("mean IoU")
    assert len(curve) == 16
    assert all(y == pytest.approx(1.0) for _, y in curve[:8])  # untouched slices are perfect
    assert all(y < 1.0 for _, y in curve[8:])
    assert window.progress.value() == 16

    window.copy_table()
    assert QApplication.clipboard().text().startswith("label,name,iou")
    window.save(tmp_path / "scores.json")
    window.save(tmp_path / "scores.csv")
    assert json.loads((tmp_path / "scores.json").read_text())["mean_iou"] == pytest.approx(
        window.result.mean_iou)
    assert (tmp_path / "scores.csv").read_text().splitlines()[2].startswith("1,bone,")
    window.grab().save(str(artifacts_dir / "iou_window.png"))

    # The folders are remembered for the next session.
    again = IoUWindow()
    qtbot.addWidget(again)
    assert again.reference.path() == reference and again.prediction.path() == prediction


@pytest.mark.parametrize("case", ["missing", "shape", "empty"])
def test_bad_input_shows_one_dialog_and_window_stays_usable(window, qtbot, sample_root, tmp_path,
                                                            case, artifacts_dir):
    reference = sample_root / "masks" / "bone_00"
    if case == "missing":
        window.reference.set_path(reference)
        window.prediction.set_path(tmp_path / "does-not-exist")
    elif case == "shape":
        write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
        window.reference.set_path(reference)
        window.prediction.set_path(tmp_path / "short")
    else:
        window.reference.edit.clear()
        window.prediction.edit.clear()
    qtbot.mouseClick(window.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.last_error != "" and window.worker is None, timeout=30000)
    dialogs = [w for w in QApplication.topLevelWidgets()
               if isinstance(w, QMessageBox) and w.isVisible()]
    assert len(dialogs) == 1
    assert dialogs[0].text() == window.last_error
    assert "Traceback" not in window.last_error
    expected = {"missing": "does not exist", "shape": "4x64x64", "empty": "Choose both"}[case]
    assert expected in window.last_error
    if case == "shape":
        dialogs[0].grab().save(str(artifacts_dir / "iou_error_dialog.png"))
    dialogs[0].close()
    assert window.compute_button.isEnabled()


def test_cancel_stops_scoring(window, qtbot, tmp_path):
    write_volume(tmp_path / "a", np.zeros((400, 64, 64), np.uint8))
    window.reference.set_path(tmp_path / "a")
    window.prediction.set_path(tmp_path / "a")
    window.compute()
    window.cancel()
    qtbot.waitUntil(lambda: window.worker is None, timeout=30000)
    assert window.result is None  # stopped long before the 400th slice
    assert window.statusBar().currentMessage() == "Cancelled."
    assert window.compute_button.isEnabled() and not window.cancel_button.isEnabled()

