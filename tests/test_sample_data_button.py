""""Try with sample data" in DLFit and DLPred, on real widgets: write, fill in, say what next."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from bone_apps.core.synthetic import write_sample_dataset  # noqa: E402
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.dlpred.window import DLPredWindow  # noqa: E402
from bone_apps.ui import sample_data  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402


def _dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def _settings(app: str) -> AppSettings:
    return AppSettings(f"{app}-sample-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def dlfit(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    win = DLFitWindow(_settings("dlfit"))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()
    for dialog in _dialogs():
        dialog.close()


@pytest.fixture
def dlpred(qtbot):
    win = DLPredWindow(_settings("dlpred"))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()
    for dialog in _dialogs():
        dialog.close()


def _choose(monkeypatch, folder: Path | None) -> None:
    monkeypatch.setattr(sample_data, "choose_folder", lambda parent, start: folder)


def test_dlfit_menu_item_writes_samples_and_fills_pairs_and_output(dlfit, qtbot, tmp_path, monkeypatch):
    folder = tmp_path / "try"
    _choose(monkeypatch, folder)
    action = next(a for a in dlfit.menuBar().actions()[0].menu().actions() if "sample" in a.text())
    with qtbot.waitSignal(dlfit.sample.written, timeout=60000):
        action.trigger()
    assert sorted(p.name for p in (folder / "scans").iterdir()) == ["bone_00", "bone_01", "bone_02",
                                                                    "bone_03"]
    assert len(dlfit.pairs.rows()) == 4
    assert dlfit.out.path() == folder / sample_data.FIT_FOLDER
    assert "press Start" in dlfit.statusBar().currentMessage()
    qtbot.waitUntil(lambda: dlfit.sample.task is None and dlfit.sample_button.isEnabled())
    assert dlfit.last_error == "" and not _dialogs()
    dlfit.pairs.stop_checks()


def test_folder_with_users_files_is_one_dialog_and_left_alone(dlfit, qtbot, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    _choose(monkeypatch, folder)
    qtbot.mouseClick(dlfit.sample_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dlfit.last_error != "", timeout=30000)
    assert "holds files bone_apps did not write" in dlfit.last_error
    dialogs = _dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == dlfit.last_error
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    assert dlfit.pairs.rows() == []


def test_cancelled_folder_question_does_nothing(dlfit, monkeypatch):
    _choose(monkeypatch, None)
    dlfit.sample_button.click()
    assert dlfit.sample.task is None and dlfit.pairs.rows() == []


def test_dlpred_without_a_model_chooses_a_scan_and_says_so(dlpred, qtbot, tmp_path, monkeypatch):
    folder = tmp_path / "try"
    _choose(monkeypatch, folder)
    with qtbot.waitSignal(dlpred.sample.written, timeout=60000):
        qtbot.mouseClick(dlpred.sample_button, Qt.MouseButton.LeftButton)
    assert dlpred.scan.path() == folder / "scans" / "bone_03"
    assert dlpred.weights.path() is None
    message = dlpred.statusBar().currentMessage()
    assert "no fitted model" in message and "Predict" in message
    qtbot.waitUntil(lambda: not dlpred.inputs.busy(), timeout=20000)
    assert dlpred.last_error == "" and not _dialogs()


def test_dlpred_reuses_a_sample_folder_and_its_fitted_model(dlpred, qtbot, tmp_path, monkeypatch):
    folder = tmp_path / "try"
    write_sample_dataset(folder, scans=2, shape=(8, 64, 64))
    model = folder / sample_data.FIT_FOLDER / "model.pth"
    model.parent.mkdir()
    model.write_bytes(b"not read by this test")
    before = (folder / "scans" / "bone_01").stat().st_mtime_ns
    _choose(monkeypatch, folder)
    with qtbot.waitSignal(dlpred.sample.written, timeout=60000):
        dlpred.menuBar().actions()[0].menu().actions()[0].trigger()
    assert (folder / "scans" / "bone_01").stat().st_mtime_ns == before  # used as it is
    assert dlpred.scan.path() == folder / "scans" / "bone_01"
    assert dlpred.weights.path() == model
    assert dlpred.statusBar().currentMessage().endswith("press Predict.")
    qtbot.waitUntil(lambda: not dlpred.inputs.busy(), timeout=20000)
