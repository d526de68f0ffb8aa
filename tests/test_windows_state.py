"""The windows as users live in them: quick to appear, honest progress texts, no stale state,
file dialogs that say what they ask for."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox  # noqa: E402

from bone_apps.core.model import models  # noqa: E402
from bone_apps.dlfit.choices import dilation_unsupported_in_smp  # noqa: E402
from bone_apps.dlfit.tips import EASY_RECIPE  # noqa: E402
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402


@pytest.fixture
def dlfit(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    win = DLFitWindow(AppSettings(f"dlfit-state-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.runner.stop()
    win.runner.wait()
    win.pairs.stop_checks()
    for dialog in QApplication.topLevelWidgets():
        if isinstance(dialog, QMessageBox):
            dialog.close()


# -- 5: the window appears without importing segmentation_models_pytorch ------------------------
def test_static_model_tables_match_smp():
    assert list(models.SMP_ARCHITECTURES) + list(models.ARCHITECTURES_3D) == models.list_architectures()
    assert list(models.SMP_ENCODERS) == models.list_encoders("2d")
    assert models.SMP_UNDILATABLE_ENCODERS == dilation_unsupported_in_smp()


def test_dlfit_easy_mode_does_not_import_smp(tmp_path):
    code = ("import sys\n"
            "from PySide6.QtWidgets import QApplication\n"
            "app = QApplication([])\n"
            "from bone_apps.dlfit.window import DLFitWindow\n"
            "w = DLFitWindow()\n"
            "w.show()\n"
            "app.processEvents()\n"
            "w.set_mode(advanced=True)\n"
            "app.processEvents()\n"
            "print(sorted(m for m in ('segmentation_models_pytorch', 'timm', 'torchvision')"
            " if m in sys.modules))\n"
            "w.close()\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- 6: progress texts say the running epoch and no estimate before there is one ----------------
def test_progress_texts_count_from_one_and_estimate_only_when_meaningful(dlfit, artifacts_dir):
    m = dlfit.monitor
    m.start(2)
    assert m.epoch_bar.text() == "Epoch 1 of 2"
    m.set_batch(1, 1, 6)
    assert m.eta_label.text() == "Epoch 1: estimating the time left…"
    m.set_batch(1, 2, 6)
    assert "estimating" in m.eta_label.text() and m.epoch_bar.text() == "Epoch 1 of 2"
    m.set_batch(1, 3, 6)
    assert "left · whole fit: about" in m.eta_label.text()
    m.set_batch(1, 1, 2, "validation")
    assert "estimating" in m.eta_label.text()  # a new phase is timed afresh
    m.add_epoch(1, 0.5, 0.6, 0.4, 0.3)
    m.set_epoch_seconds(30.0)
    m.set_batch(2, 1, 6)  # a whole epoch measured: an estimate from the first batch on
    assert m.epoch_bar.text() == "Epoch 2 of 2" and "whole fit: about" in m.eta_label.text()
    assert m.batch_bar.text() == "Training batch 1 of 6"
    dlfit.grab().save(str(artifacts_dir / "state_running_epoch2.png"))


def test_easy_run_says_the_patch_and_batch_it_uses(dlfit, qtbot, sample_root, tmp_path,
                                                  monkeypatch, artifacts_dir):
    from bone_apps.core.fit.records import FitMessage

    started = []
    monkeypatch.setattr(dlfit.runner, "start", lambda config, **kw: started.append(config))
    dlfit.pairs.add_dataset_root(sample_root)
    dlfit.out.set_path(tmp_path / "run")
    dlfit.start()
    assert started and started[0].easy and "uses the paper's recipe with 256-px patches and batch 64." in (
        dlfit.recipe.text())
    # The engine's notes (as core.fit words them) say how Easy mode adapts to small data.
    for text in ("Easy mode: patches shrink from 256 to 64 px because the smallest scan is 64 px "
                 "across.", "Easy mode: batch shrinks from 64 to 8 patches because an epoch holds "
                 "only 96 training patches (at least 8 updates per epoch)."):
        dlfit.runner._on_event(FitMessage(text, "note"))
    recipe = dlfit.recipe.text()
    assert "This Easy run uses the paper's recipe with 64-px patches and batch 8." in recipe
    assert dlfit.recipe.toolTip() == EASY_RECIPE
    assert "• Patches shrink from 256 to 64 px because the smallest scan" in recipe
    assert "• Batch shrinks from 64 to 8" in recipe
    dlfit.grab().save(str(artifacts_dir / "state_easy_run_uses.png"))


# -- 7: nothing stale: bars, status line, curves of another folder, empty axes ------------------
def test_run_end_error_close_and_new_folder_leave_nothing_stale(dlfit, qtbot, tmp_path,
                                                                 artifacts_dir):
    m = dlfit.monitor
    m.start(2)
    m.set_batch(1, 2, 6)
    m.add_epoch(1, 0.5, 0.6, 0.4, 0.3)
    m.set_best(1, 0.3, {"bone": 0.3})
    m.set_idle()  # what the runner does when a run ends
    assert m.batch_bar.text() == "Batches" and m.batch_bar.value() == 0
    assert m.epoch_bar.text() == "1 of 2 epochs done"

    dlfit._error("The output folder cannot be written.")
    assert dlfit.statusBar().currentMessage().startswith("Something needs your attention")
    box = next(w for w in QApplication.topLevelWidgets()
               if isinstance(w, QMessageBox) and w.isVisible())
    box.button(QMessageBox.StandardButton.Ok).click()
    qtbot.waitUntil(lambda: dlfit.statusBar().currentMessage() == "")

    m.show_summary("Done: 2 epochs.", tmp_path)
    dlfit.out.set_path(tmp_path / "another")  # holds no run: the old curves and result go
    for plot in (m.loss_plot, m.iou_plot):
        assert plot.series("train") == [] and plot.axes()[2:] == (0.0, 1.0)
        assert plot.x_ticks() == [0.0, 1.0]
    assert m.summary.isHidden() and m.best_table.rowCount() == 0
    assert m.epoch_bar.text() == "Epochs" and m.eta_label.text() == "Not started."
    dlfit.grab().save(str(artifacts_dir / "state_empty_after_new_folder.png"))


# -- 9: each file dialog says what it asks for ---------------------------------------------------
def _capture_dialogs(monkeypatch) -> list[tuple[str, str, str]]:
    """(kind, title, start or filter) of each file dialog opened; every dialog is cancelled."""
    seen: list[tuple[str, str, str]] = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda parent, title, start="": seen.append(("folder", title, start)) or "")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda parent, title, start="", filt="": (
        seen.append(("open", title, filt)) or ("", "")))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda parent, title, start="", filt="": (
        seen.append(("save", title, start)) or ("", "")))
    return seen


def test_file_dialogs_have_the_right_titles_and_places(dlfit, qtbot, monkeypatch, tmp_path):
    from PySide6.QtCore import Qt

    from bone_apps.dlpred.window import DLPredWindow
    from bone_apps.iou.window import IoUWindow
    from bone_apps.ui.pickers import save_folder

    seen = _capture_dialogs(monkeypatch)
    qtbot.mouseClick(dlfit.out.folder_button, Qt.MouseButton.LeftButton)
    dlfit.set_mode(advanced=True)
    qtbot.mouseClick(dlfit.advanced.init_file.file_button, Qt.MouseButton.LeftButton)
    pred = DLPredWindow(AppSettings(f"dlpred-state-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(pred)
    qtbot.mouseClick(pred.inputs.weights.file_button, Qt.MouseButton.LeftButton)
    assert seen[0][:2] == ("folder", "Choose an output folder")
    for kind, title, filt in seen[1:]:
        assert (kind, title) == ("open", "Choose a weights file (.pth)") and "*.pth" in filt
    assert dlfit.out.folder_button.toolTip() == "Choose an output folder"

    # Scores are suggested beside the prediction, never inside a dataset's scans/ or masks/.
    iou = IoUWindow(AppSettings(f"iou-state-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(iou)
    data = tmp_path / "dataset"
    (data / "scans" / "bone_00").mkdir(parents=True)
    iou.scored = (data / "masks" / "bone_00", data / "scans" / "bone_00_labels")
    iou._save_dialog("json")  # what "Save JSON" does once scores were computed
    assert seen[-1][0] == "save" and Path(seen[-1][2]) == data / "iou.json"
    assert save_folder(tmp_path / "predictions" / "bone_00") == tmp_path / "predictions"
    assert save_folder(data / "masks" / "b", last=str(tmp_path)) == tmp_path
    assert save_folder(data / "masks" / "b", last=str(data / "scans")) == data
