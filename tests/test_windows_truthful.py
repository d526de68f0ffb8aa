"""The windows never show or export numbers, outputs or messages that belong to something else.

IoU: a new Compute clears the last result, export names the scored pair and is off once the
fields change. DLPred: the default output stays out of a dataset's scans/ and masks/, a label
mask chosen as the scan is questioned, a dataset folder is called one. Dataset discovery leaves
prediction outputs out.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("PySide6")
torch = pytest.importorskip("torch")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from bone_apps.core.data.pairs import pairs_from_root  # noqa: E402
from bone_apps.core.io.stack_kind import dataset_root_problem, label_stack_reason  # noqa: E402
from bone_apps.core.io.volume import open_volume  # noqa: E402
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.core.model.models import build_model  # noqa: E402
from bone_apps.core.model.weights import save_weights  # noqa: E402
from bone_apps.dlpred import bridge  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402

NAMES = "background,bone,pores"


def _dialogs(kind: str | None = None) -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()
            and (kind is None or w.objectName() == kind)]


def _close_dialogs() -> None:
    for box in _dialogs():
        box.close()


@pytest.fixture
def iou(qtbot):
    win = IoUWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    _close_dialogs()
    win.close()


def _compute(win, qtbot) -> None:
    qtbot.mouseClick(win.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.worker is None, timeout=30000)


def _exports(win) -> list[bool]:
    return [b.isEnabled() for b in (win.copy_button, win.csv_button, win.json_button)]


# -- IoU ------------------------------------------------------------------------------------------

def test_iou_failed_compute_clears_the_last_result_and_its_export(iou, qtbot, sample_root, tmp_path,
                                                                  artifacts_dir):
    assert iou.progress.text() == "no run yet" and iou.table.rowCount() == 0  # not "0 / 100"
    assert _exports(iou) == [False] * 3
    reference, prediction = sample_root / "masks" / "bone_00", sample_root / "masks" / "bone_01"
    iou.reference.set_path(reference)
    iou.prediction.set_path(prediction)
    iou.class_names.setText(NAMES)
    _compute(iou, qtbot)
    assert iou.result is not None and _exports(iou) == [True] * 3
    assert str(prediction) in iou.pair_label.text() and str(reference) in iou.pair_label.text()

    # A prediction that cannot be scored: the old numbers leave with the new Compute.
    write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
    iou.prediction.set_path(tmp_path / "short")
    _compute(iou, qtbot)
    assert "4x64x64" in iou.last_error and len(_dialogs()) == 1
    _close_dialogs()
    assert iou.result is None and iou.table.rowCount() == 0
    assert "—" in iou.mean_label.text() and iou.plot.series("mean IoU") == []
    assert _exports(iou) == [False] * 3 and iou.progress.text() == "no result"
    with pytest.raises(ValueError):
        iou.save(tmp_path / "scores.json")
    assert not (tmp_path / "scores.json").exists()
    iou.grab().save(str(artifacts_dir / "iou_after_failed_compute.png"))


def test_iou_export_names_the_scored_pair_and_greys_out_when_fields_change(
        iou, qtbot, sample_root, tmp_path, artifacts_dir):
    reference, prediction = sample_root / "masks" / "bone_00", sample_root / "masks" / "bone_01"
    iou.reference.set_path(reference)
    iou.prediction.set_path(prediction)
    iou.class_names.setText(NAMES)
    _compute(iou, qtbot)
    mean = iou.result.mean_iou

    iou.prediction.edit.setText(str(tmp_path / "elsewhere"))  # typed, not computed
    assert _exports(iou) == [False] * 3 and "changed" in iou.pair_label.text()
    assert iou.table.rowCount() == 3  # still on show, with the pair it belongs to
    assert str(prediction) in iou.pair_label.text()
    iou.grab().save(str(artifacts_dir / "iou_stale_result.png"))
    with pytest.raises(ValueError):
        iou.save(tmp_path / "scores.json")
    iou.class_names.setText("background,bone")
    iou.prediction.edit.setText(str(prediction))
    assert _exports(iou) == [False] * 3  # the names still differ
    iou.class_names.setText(NAMES)
    assert _exports(iou) == [True] * 3  # back to the scored pair
    iou.save(tmp_path / "scores.json")
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["prediction"] == str(prediction) and saved["reference"] == str(reference)
    assert saved["mean_iou"] == pytest.approx(mean)


def test_iou_scan_given_as_prediction_is_called_a_scan(iou, qtbot, sample_root):
    iou.reference.set_path(sample_root / "masks" / "bone_00")
    iou.prediction.set_path(sample_root / "scans" / "bone_00")
    iou.class_names.setText(NAMES)
    _compute(iou, qtbot)
    assert "looks like a scan, not a label mask" in iou.last_error
    assert "class name" not in iou.last_error and "--" not in iou.last_error
    assert iou.result is None and _exports(iou) == [False] * 3


def test_iou_size_mismatch_names_the_field_changed_last(iou, qtbot, sample_root, tmp_path,
                                                        artifacts_dir):
    write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
    iou.reference.set_path(sample_root / "masks" / "bone_00")
    iou.prediction.set_path(sample_root / "masks" / "bone_01")
    _compute(iou, qtbot)
    assert iou.result is not None
    iou.reference.set_path(tmp_path / "short")  # the reference is swapped for a wrong one
    _compute(iou, qtbot)
    assert "choose the reference that belongs to this prediction" in iou.last_error
    assert iou.last_error.startswith(str(tmp_path / "short"))
    _dialogs()[0].grab().save(str(artifacts_dir / "iou_reference_mismatch_dialog.png"))
    _close_dialogs()
    iou.reference.set_path(sample_root / "masks" / "bone_00")
    iou.prediction.set_path(tmp_path / "short")  # now the prediction is the one changed
    _compute(iou, qtbot)
    assert "choose the prediction that belongs to this reference" in iou.last_error


# -- DLPred ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", in_channels=1, classes=3)
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": NAMES.split(","), "patch_size": 64, "context": 0, "patch_depth": 1,
            "norm": "zscore", "required_multiple": 32}
    return save_weights(tmp_path_factory.mktemp("weights") / "tiny.pth", model, meta)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample_root):
    """A copy of the sample dataset this module may write into."""
    root = tmp_path_factory.mktemp("dataset") / "data"
    shutil.copytree(sample_root, root)
    return root


@pytest.fixture
def dlpred(qtbot):
    win = DLPredWindow()
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    _close_dialogs()
    win.close()


def _choose(win, qtbot, scan, weights) -> None:
    win.output.edit.clear()  # follow the scan with the default output
    win.scan.set_path(scan)
    win.weights.set_path(weights)
    qtbot.waitUntil(lambda: not win.inputs.busy(), timeout=20000)


def test_dlpred_default_output_leaves_the_dataset_and_discovery_skips_old_outputs(
        dlpred, qtbot, dataset, weights_file, artifacts_dir):
    _choose(dlpred, qtbot, dataset / "scans" / "bone_02", weights_file)  # an 8-bit scan
    assert dlpred.inputs.label_reason is None and not _dialogs()
    output = dataset / "predictions" / "bone_02_labels"
    assert dlpred.output.path() == output
    qtbot.mouseClick(dlpred.predict_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlpred.worker is None, timeout=45000)
    assert dlpred.last_error == "" and dlpred.output_path == output
    assert open_volume(output, role="mask").shape == (16, 64, 64)
    dlpred.grab().save(str(artifacts_dir / "dlpred_output_in_predictions.png"))

    # Outputs an earlier version wrote inside scans/ and masks/ are not taken as a pair.
    shutil.copytree(output, dataset / "scans" / "bone_02_labels")
    shutil.copytree(output, dataset / "masks" / "bone_02_labels")
    notes: list[str] = []
    pairs = pairs_from_root(dataset, notes=notes)
    assert [p.id for p in pairs] == ["bone_00", "bone_01", "bone_02", "bone_03"]
    assert len(notes) == 1 and "skipped 2 prediction output(s)" in notes[0]
    assert str(dataset / "scans" / "bone_02_labels") in notes[0]
    shutil.rmtree(dataset / "scans" / "bone_02_labels")
    shutil.rmtree(dataset / "masks" / "bone_02_labels")
    # Outside a dataset the output stays next to the scan, as before.
    assert bridge.default_output(dataset / "bone_02") == dataset / "bone_02_labels"


def test_dlpred_label_mask_as_scan_is_questioned(dlpred, qtbot, dataset, weights_file, tmp_path,
                                                 artifacts_dir):
    mask = dataset / "masks" / "bone_01"
    _choose(dlpred, qtbot, mask, weights_file)
    assert "looks like a label mask" in dlpred.inputs.scan_info.text()
    assert dlpred.output.path() == dataset / "predictions" / "bone_01_labels"  # not in masks/
    qtbot.mouseClick(dlpred.predict_button, Qt.MouseButton.LeftButton)
    questions = _dialogs("labelQuestion")
    assert len(questions) == 1 and dlpred.worker is None  # nothing runs before the answer
    assert str(mask) in questions[0].text() and "--" not in questions[0].text()
    dlpred.grab().save(str(artifacts_dir / "dlpred_label_scan_warning.png"))
    questions[0].grab().save(str(artifacts_dir / "dlpred_label_scan_question.png"))
    choose = next(b for b in questions[0].buttons() if b.text() == "Choose another scan")
    qtbot.mouseClick(choose, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not _dialogs("labelQuestion"))
    assert dlpred.worker is None and dlpred.report is None
    assert not (dataset / "predictions" / "bone_01_labels").exists()

    # A label stack outside masks/ is recognised by its few values; the user may go on.
    write_volume(tmp_path / "labels_copy", open_volume(mask, role="mask").read_slab(0, 16))
    assert "distinct values" in label_stack_reason(open_volume(tmp_path / "labels_copy"))
    _choose(dlpred, qtbot, tmp_path / "labels_copy", weights_file)
    qtbot.mouseClick(dlpred.predict_button, Qt.MouseButton.LeftButton)
    question = _dialogs("labelQuestion")[0]
    anyway = next(b for b in question.buttons() if b.text() == "Predict anyway")
    qtbot.mouseClick(anyway, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlpred.report is not None and dlpred.worker is None, timeout=45000)
    assert dlpred.output_path == tmp_path / "labels_copy_labels"
    assert label_stack_reason(open_volume(dataset / "scans" / "bone_01")) is None


def test_dlpred_dataset_root_as_scan_is_called_a_dataset_folder(dlpred, qtbot, dataset,
                                                                 weights_file, artifacts_dir):
    _choose(dlpred, qtbot, dataset, weights_file)
    expected = f"choose one scan inside {dataset / 'scans'}"
    assert "is a dataset folder" in dlpred.inputs.scan_info.text()
    assert expected in dlpred.inputs.scan_info.text()
    qtbot.mouseClick(dlpred.predict_button, Qt.MouseButton.LeftButton)
    assert "is a dataset folder" in dlpred.last_error and expected in dlpred.last_error
    assert "empty" not in dlpred.last_error and len(_dialogs()) == 1
    dlpred.grab().save(str(artifacts_dir / "dlpred_dataset_root.png"))
    assert dataset_root_problem(dataset / "scans" / "bone_00") is None
