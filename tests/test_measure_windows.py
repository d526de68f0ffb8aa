"""Morphometry in the windows: DLPred measures what it wrote, IoU compares reference and prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("torch")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from test_predict import make_weights  # noqa: E402

from bone_apps.core.io.volume import open_volume  # noqa: E402
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.core.measure.compare import (  # noqa: E402
    KEY_MEASURES,
    compare_stacks,
    difference_percent,
    difference_text,
    measure_text,
)
from bone_apps.core.measure.morphometry import MeasureOptions, measure  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402

NAMES = ("background", "bone", "pores")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("w") / "tiny.pth", "2d", seed=1)


@pytest.fixture
def dlpred(qtbot):
    win = DLPredWindow()
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    win.close()


@pytest.fixture
def iou(qtbot):
    win = IoUWindow()
    qtbot.addWidget(win)
    win.resize(900, 720)
    win.show()
    yield win
    win.close()


def _dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def _close_dialogs() -> None:
    for dialog in _dialogs():
        dialog.close()


def _column(table, column: int) -> list[str]:
    return [table.item(row, column).text() for row in range(table.rowCount())]


def _mask_without_voxel_size(source, target):
    volume = open_volume(source, role="mask")
    write_volume(target, volume.read_slab(0, volume.shape[0]))
    return target


def test_dlpred_measures_the_labels_it_wrote(dlpred, qtbot, sample_root, weights, tmp_path, artifacts_dir):
    # A scan whose files record no voxel size: its labels do not either.
    scan = _mask_without_voxel_size(sample_root / "scans" / "bone_02", tmp_path / "scan")
    output = tmp_path / "scan_labels"
    dlpred.scan.set_path(scan)
    dlpred.weights.set_path(weights)
    dlpred.output.set_path(output)
    qtbot.waitUntil(lambda: not dlpred.inputs.busy(), timeout=20000)
    dlpred.options.chunk.setValue(64)
    assert not dlpred.measure_button.isEnabled()  # nothing written yet
    qtbot.mouseClick(dlpred.predict_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlpred.worker is None, timeout=45000)
    assert dlpred.last_error == "" and dlpred.measure_button.isEnabled()
    view = dlpred.measures

    # Without a voxel size: one dialog asking for it, naming the field; no numbers.
    qtbot.mouseClick(dlpred.measure_button, Qt.MouseButton.LeftButton)
    assert dlpred.result_tabs.currentWidget() is view
    qtbot.waitUntil(lambda: view.last_error != "" and view.worker is None, timeout=30000)
    dialogs = _dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == view.last_error
    assert "does not record its voxel size" in view.last_error
    assert "Voxel size field" in view.last_error and "--" not in view.last_error
    assert view.result is None and view.table.rowCount() == 0 and dlpred.measure_button.isEnabled()
    dialogs[0].grab().save(str(artifacts_dir / "dlpred_measure_no_voxel_size.png"))
    _close_dialogs()

    # With the voxel size entered: the table holds the core's numbers, one row per label.
    view.voxel_size.setValue(35.0)
    seen = []
    progress_text = view.progress_text
    view.progress_text = lambda record: (seen.append(record), progress_text(record))[1]
    qtbot.mouseClick(dlpred.measure_button, Qt.MouseButton.LeftButton)
    assert not dlpred.measure_button.isEnabled()  # running
    qtbot.waitUntil(lambda: view.result is not None and view.worker is None, timeout=30000)
    expected = measure(output, MeasureOptions(class_names=NAMES, voxel_size_um=(35.0, 35.0, 35.0)))
    assert seen and seen[-1].done == seen[-1].total  # progress was shown
    assert view.table.rowCount() == len(expected.labels) >= 1
    headers = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    assert headers == ["Label", "BV/TV", "BS/BV (1/mm)", "Tb.Th (mm)", "Tb.Sp (mm)", "Tb.N (1/mm)",
                       "Conn.D (1/mm^3)"]
    for row, entry in enumerate(expected.labels):
        assert view.table.item(row, 0).text() == f"{entry.label}: {entry.name}"
        values = entry.values()
        assert [view.table.item(row, c).text() for c in range(1, 7)] == [
            measure_text(values[key]) for key in KEY_MEASURES]
    assert "35 x 35 x 35 µm (entered)" in view.status.text()

    view.save(tmp_path / "measures.json")
    view.save(tmp_path / "measures.csv")
    saved = json.loads((tmp_path / "measures.json").read_text())
    assert [e["BV/TV"] for e in saved["labels"]] == [e.values()["BV/TV"] for e in expected.labels]
    assert saved["voxel_size_um"] == {"z": 35.0, "y": 35.0, "x": 35.0}
    assert (tmp_path / "measures.csv").read_text() == expected.csv_text()
    dlpred.grab().save(str(artifacts_dir / "dlpred_morphometry.png"))

    # A new prediction clears the numbers of the old labels at once.
    dlpred.overwrite.setChecked(True)
    dlpred.predict()
    assert view.result is None and view.table.rowCount() == 0 and not dlpred.measure_button.isEnabled()
    qtbot.waitUntil(lambda: dlpred.worker is None, timeout=45000)
    assert dlpred.measure_button.isEnabled()


def _pair(sample_root, tmp_path):
    """The reference bone_01 and a prediction that lost part of it (no voxel size recorded)."""
    reference = sample_root / "masks" / "bone_01"
    mask = open_volume(reference, role="mask").read_slab(0, 16)
    prediction = mask.copy()
    prediction[8:, :, ::5] = 0
    write_volume(tmp_path / "pred", prediction)
    return reference, tmp_path / "pred"


def _choose(window, reference, prediction):
    window.reference.set_path(reference)
    window.prediction.set_path(prediction)
    window.class_names.setText(",".join(NAMES))


def test_iou_morphometry_tab_compares_both_and_forgets_another_pair(iou, qtbot, sample_root, tmp_path,
                                                                    artifacts_dir):
    reference, prediction = _pair(sample_root, tmp_path)
    _choose(iou, reference, prediction)
    tab = iou.morphometry
    iou.tabs.setCurrentWidget(tab)
    qtbot.mouseClick(tab.measure_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.result is not None and tab.worker is None, timeout=30000)

    job = compare_stacks(reference, prediction, MeasureOptions(class_names=NAMES))
    while True:
        try:
            next(job)
        except StopIteration as done:
            expected = done.value
            break
    rows = expected.rows()
    assert len(rows) == 2 * len(KEY_MEASURES) == tab.table.rowCount()  # bone and pores
    assert _column(tab.table, 1)[:len(KEY_MEASURES)] == [
        "BV/TV", "BS/BV (1/mm)", "Tb.Th (mm)", "Tb.Sp (mm)", "Tb.N (1/mm)", "Conn.D (1/mm^3)"]
    assert _column(tab.table, 0)[0] == "1: bone" and _column(tab.table, 0)[len(KEY_MEASURES)] == "2: pores"
    ref_bone = measure(reference, MeasureOptions(class_names=NAMES)).label(1).values()
    assert tab.table.item(0, 2).text() == measure_text(ref_bone["BV/TV"])
    # The prediction records no voxel size: it is measured with the reference's.
    pred_bone = measure(prediction, MeasureOptions(class_names=NAMES,
                                                   voxel_size_um=expected.reference.voxel_size_um))
    assert tab.table.item(0, 3).text() == measure_text(pred_bone.label(1).values()["BV/TV"])
    bvtv = difference_percent(ref_bone["BV/TV"], pred_bone.label(1).values()["BV/TV"])
    assert bvtv < 0 and tab.table.item(0, 4).text() == difference_text(bvtv)
    assert tab.table.item(0, 4).text().endswith(" %")
    for row, r in enumerate(rows):
        assert tab.table.item(row, 2).text() == measure_text(r.reference)
        assert tab.table.item(row, 3).text() == measure_text(r.prediction)
        assert tab.table.item(row, 4).text() == difference_text(r.difference_percent)
    tab.save(tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text() == expected.csv_text()
    iou.grab().save(str(artifacts_dir / "iou_morphometry.png"))

    # Another prediction: the numbers go at once.
    iou.prediction.set_path(reference)
    assert tab.result is None and tab.table.rowCount() == 0
    # A Compute clears them too.
    qtbot.mouseClick(tab.measure_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.result is not None and tab.worker is None, timeout=30000)
    assert set(_column(tab.table, 4)) <= {"+0.0 %", "—"}  # a mask against itself
    qtbot.mouseClick(iou.compute_button, Qt.MouseButton.LeftButton)
    assert tab.result is None and tab.table.rowCount() == 0
    qtbot.waitUntil(lambda: iou.worker is None, timeout=30000)

    # A change while measuring: that run's numbers are never shown.
    qtbot.mouseClick(tab.measure_button, Qt.MouseButton.LeftButton)
    iou.prediction.set_path(prediction)
    qtbot.waitUntil(lambda: tab.worker is None, timeout=30000)
    assert tab.result is None and tab.table.rowCount() == 0 and not _dialogs()


def test_iou_morphometry_asks_for_a_voxel_size_neither_mask_records(iou, qtbot, sample_root, tmp_path,
                                                                    artifacts_dir):
    reference = _mask_without_voxel_size(sample_root / "masks" / "bone_01", tmp_path / "ref")
    _reference, prediction = _pair(sample_root, tmp_path)
    _choose(iou, reference, prediction)
    tab = iou.morphometry
    iou.tabs.setCurrentWidget(tab)
    qtbot.mouseClick(tab.measure_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.last_error != "" and tab.worker is None, timeout=30000)
    dialogs = _dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == tab.last_error
    assert "records its voxel size" in tab.last_error and "Voxel size field" in tab.last_error
    assert "Traceback" not in tab.last_error and tab.result is None
    iou.grab().save(str(artifacts_dir / "iou_morphometry_no_voxel_size.png"))
    _close_dialogs()

    tab.voxel_size.setValue(20.0)
    qtbot.mouseClick(tab.measure_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.result is not None and tab.worker is None, timeout=30000)
    assert tab.result.reference.voxel_size_um == (20.0, 20.0, 20.0) == tab.result.prediction.voxel_size_um
    assert tab.table.rowCount() == 2 * len(KEY_MEASURES) and "20 x 20 x 20 µm" in tab.status.text()
    assert np.isfinite(float(tab.table.item(0, 2).text()))


def test_comparison_refuses_two_voxel_sizes_and_shows_a_label_one_mask_lacks(tmp_path):
    from bone_apps.core.io.volume import VoxelSize
    from bone_apps.core.measure.morphometry import MorphometryError

    mask = np.zeros((8, 24, 24), np.uint8)
    mask[2:6, 4:20, 4:12] = 1
    other = mask.copy()
    other[2:6, 4:20, 14:20] = 2  # a label the reference lacks
    write_volume(tmp_path / "ref", mask, voxel_size=VoxelSize(10.0, 10.0, 10.0))
    write_volume(tmp_path / "pred", other, voxel_size=VoxelSize(12.0, 12.0, 12.0))

    def run(options):
        job = compare_stacks(tmp_path / "ref", tmp_path / "pred", options)
        while True:
            try:
                next(job)
            except StopIteration as done:
                return done.value

    with pytest.raises(MorphometryError, match="10 x 10 x 10 um voxels but .* 12 x 12 x 12 um"):
        run(MeasureOptions())
    result = run(MeasureOptions(voxel_size_um=(10.0, 10.0, 10.0)))
    absent = [r for r in result.rows() if r.label == 2]
    assert [r.key for r in absent] == list(KEY_MEASURES)
    assert absent[0].reference == 0.0 and absent[0].prediction > 0 and absent[0].difference_percent is None
    assert all(r.reference is None for r in absent[1:])
    assert difference_percent(0.231, 0.229) == pytest.approx(-0.8658, abs=1e-3)
    assert difference_text(difference_percent(0.231, 0.229)) == "-0.9 %"
