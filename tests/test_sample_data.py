""""Try with sample data" in each window: a folder is asked for, the sample scans are written
there off the GUI thread, the fields are filled in and the window says what to press next."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
torch = pytest.importorskip("torch")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox  # noqa: E402

from bone_apps.core.io.outputs import read_marker  # noqa: E402
from bone_apps.core.model.models import build_model  # noqa: E402
from bone_apps.core.model.weights import save_weights  # noqa: E402
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402
from bone_apps.ui import sample_data  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402

SHAPE = (16, 64, 64)  # small: written in a moment


def _settings(app: str) -> AppSettings:
    """Settings of their own, so nothing remembered by another test is filled in."""
    return AppSettings(f"{app}-sample-test-{uuid.uuid4().hex[:8]}")


def _dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


@pytest.fixture
def open_window(qtbot, monkeypatch, tmp_path):
    """Make, show and afterwards close a window; every worker it started has ended then."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    made = []

    def make(cls, app: str):
        win = cls(_settings(app))
        win.sample.shape = SHAPE
        qtbot.addWidget(win)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        win.close()  # closeEvent waits for the sample writer and the window's own workers
        assert not win.sample.is_running()
    for dialog in _dialogs():
        dialog.close()


def _try_sample(qtbot, monkeypatch, win, folder: Path, via_menu: bool = False) -> Path:
    """Press "Try with sample data…", choose `folder` in the (patched) folder dialog, wait."""
    asked = []

    def choose(parent, title, start=""):
        asked.append(title)
        return str(folder)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", choose)
    if via_menu:
        win.sample.action.trigger()
    else:
        qtbot.mouseClick(win.sample.button, Qt.MouseButton.LeftButton)
    assert asked == [sample_data.TITLE]
    qtbot.waitUntil(lambda: not win.sample.is_running() and win.sample.hint.isVisible(), timeout=30000)
    assert win.sample.button.isEnabled() and not win.sample.progress.isVisible()
    assert not _dialogs(), [d.text() for d in _dialogs()]
    return win.sample.root


def _written(root: Path) -> None:
    """The four sample scans and masks are on disk, as `bone synth` writes them."""
    assert read_marker(root)["kind"] == "dataset"
    for kind in ("scans", "masks"):
        ids = sorted(p.name for p in (root / kind).iterdir())
        assert ids == [f"bone_0{k}" for k in range(4)]
        assert len(list((root / kind / "bone_03").glob("*.tif"))) == SHAPE[0]


def test_dlfit_fills_pairs_and_output_and_says_press_start(open_window, qtbot, monkeypatch, tmp_path,
                                                           artifacts_dir):
    win = open_window(DLFitWindow, "dlfit")
    win.set_mode(advanced=True)
    root = _try_sample(qtbot, monkeypatch, win, tmp_path / "samples")
    assert root == tmp_path / "samples"  # a new folder holds the dataset itself
    _written(root)
    assert not win.is_advanced()
    assert [Path(scan).name for scan, _, _ in win.pairs.rows()] == [f"bone_0{k}" for k in range(4)]
    assert win.out.path() == root / "fit"
    assert "press Start" in win.sample.hint.text()
    qtbot.waitUntil(lambda: not win.pairs.is_checking(), timeout=30000)
    assert not win.pairs.problems()
    assert win.start_button.isEnabled()
    win.grab().save(str(artifacts_dir / "sample_dlfit.png"))


def test_dlfit_writes_beside_the_users_files_and_from_the_menu(open_window, qtbot, monkeypatch,
                                                               tmp_path):
    folder = tmp_path / "my data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    win = open_window(DLFitWindow, "dlfit")
    root = _try_sample(qtbot, monkeypatch, win, folder, via_menu=True)
    assert root == folder / sample_data.SAMPLE_FOLDER
    _written(root)
    assert (folder / "notes.txt").read_text() == "mine"
    # Chosen again: the same dataset is written again in place, nothing else.
    assert _try_sample(qtbot, monkeypatch, win, root) == root
    assert sorted(p.name for p in folder.iterdir()) == [sample_data.SAMPLE_FOLDER, "notes.txt"]
    qtbot.waitUntil(lambda: not win.pairs.is_checking(), timeout=30000)


def test_no_folder_chosen_changes_nothing(open_window, qtbot, monkeypatch):
    win = open_window(IoUWindow, "iou")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda parent, title, start="": "")
    qtbot.mouseClick(win.sample.button, Qt.MouseButton.LeftButton)
    assert not win.sample.is_running() and win.sample.root is None
    assert win.sample.hint.isHidden() and win.reference.path() is None


def test_an_unwritable_place_is_one_dialog(open_window, qtbot, monkeypatch, tmp_path):
    win = open_window(IoUWindow, "iou")
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda parent, title, start="": str(blocker / "samples"))
    qtbot.mouseClick(win.sample.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.last_error != "" and not win.sample.is_running(), timeout=30000)
    dialogs = _dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == win.last_error
    assert "Traceback" not in win.last_error and win.sample.hint.isHidden()
    dialogs[0].close()


def _tiny_model(path: Path) -> Path:
    """A tiny random 2D U-Net saved as a complete weights file (what a sample fit writes)."""
    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", in_channels=1, classes=3)
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": ["background", "bone", "pores"], "patch_size": 64, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": 32, "best_epoch": 1,
            "metrics": {"val_iou": 0.5}, "fit_config": {"epochs": 1, "batch": 4, "lr": 0.001}}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_weights(path, model, meta)


def test_dlpred_without_a_model_says_fit_one_in_dlfit_first(open_window, qtbot, monkeypatch, tmp_path,
                                                            artifacts_dir):
    win = open_window(DLPredWindow, "dlpred")
    root = _try_sample(qtbot, monkeypatch, win, tmp_path / "samples")
    _written(root)
    assert win.scan.path() == root / "scans" / "bone_03"
    assert win.output.path() == root / "predictions" / "bone_03_labels"
    assert win.weights.path() is None
    assert "fit one in DLFit first" in win.sample.hint.text()
    qtbot.waitUntil(lambda: not win.inputs.busy(), timeout=20000)
    assert win.preview.volume is not None  # the sample scan is on show
    win.grab().save(str(artifacts_dir / "sample_dlpred_no_model.png"))


def test_dlpred_uses_the_model_found_in_the_folder_and_says_press_predict(
        open_window, qtbot, monkeypatch, tmp_path, artifacts_dir):
    win = open_window(DLPredWindow, "dlpred")
    root = _try_sample(qtbot, monkeypatch, win, tmp_path / "samples")
    model = _tiny_model(root / "fit" / "model.pth")  # DLFit's sample run in the same folder
    assert _try_sample(qtbot, monkeypatch, win, root) == root  # the sample dataset is reused
    _written(root)
    assert win.weights.path() == model
    assert "press Predict" in win.sample.hint.text()
    qtbot.waitUntil(lambda: not win.inputs.busy() and win.meta is not None, timeout=20000)
    win.grab().save(str(artifacts_dir / "sample_dlpred.png"))


def test_iou_uses_the_sample_mask_and_says_predict_first_then_compute(
        open_window, qtbot, monkeypatch, tmp_path, artifacts_dir):
    win = open_window(IoUWindow, "iou")
    root = _try_sample(qtbot, monkeypatch, win, tmp_path / "samples")
    _written(root)
    prediction = root / "predictions" / "bone_03_labels"
    assert win.reference.path() == root / "masks" / "bone_03"
    assert win.prediction.path() == prediction  # where DLPred's sample prediction goes
    assert win.class_names.text() == "background,bone,pores"
    assert "predict the sample scan" in win.sample.hint.text() and "DLPred first" in win.sample.hint.text()
    win.grab().save(str(artifacts_dir / "sample_iou_no_prediction.png"))

    # Once DLPred has written the prediction (here: a copy of the mask), the same folder again
    # says Compute, and Compute scores it.
    shutil.copytree(root / "masks" / "bone_03", prediction)
    _try_sample(qtbot, monkeypatch, win, root)
    assert "press Compute" in win.sample.hint.text()
    qtbot.mouseClick(win.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.result is not None and win.worker is None, timeout=30000)
    assert win.result.mean_iou == pytest.approx(1.0)
