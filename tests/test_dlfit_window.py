"""The DLFit window driven like a user would: pairs, modes, options, a tiny fit, Stop, Resume."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QGroupBox,
    QLabel,
    QMessageBox,
    QPushButton,
    QRadioButton,
)

from bone_apps.core.fit.config import FitConfig  # noqa: E402
from bone_apps.core.fit.records import EpochEnd, StepProgress
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.core.model.weights import load_weights  # noqa: E402
from bone_apps.dlfit.choices import architecture_choices, encoder_choices  # noqa: E402
from bone_apps.dlfit.pairs import PROBLEM_BG, VALIDATION  # noqa: E402
from bone_apps.dlfit.tips import plain_options  # noqa: E402
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402


@pytest.fixture
def settings():
    """Settings of their own per test, so one test's remembered options never leak."""
    return AppSettings(f"dlfit-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def window(qtbot, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    win = DLFitWindow(settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.runner.stop()
    win.runner.wait()
    win.pairs.stop_checks()
    for dialog in _dialogs():
        dialog.close()


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads only fight each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def _wait_checks(qtbot, win) -> None:
    qtbot.waitUntil(lambda: not win.pairs.is_checking()
                    and all(c is not None and c.done for c in win.pairs.row_checks()), timeout=20000)


def _tiny(win, out: Path, epochs: int = 2) -> None:
    """Advanced mode with settings a CPU fits in seconds."""
    win.set_mode(advanced=True)
    w = win.advanced.w
    for key, value in (("patch", 32), ("batch", 4), ("patches_per_tile", 1), ("epochs", epochs),
                       ("workers", 0), ("stats_workers", 1)):
        w[key].setValue(value)
    w["init"].setCurrentIndex(w["init"].findData("random"))
    w["profile"].setChecked(False)
    win.out.set_path(out)


def _drop(table, paths: list[Path]) -> None:
    """What a drop from a file manager delivers (Qt sends real drops only during a drag)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    below_rows = QPointF(5, table.viewport().height() - 3)
    table.dropEvent(QDropEvent(below_rows, Qt.DropAction.CopyAction, mime,
                               Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))


def test_pairs_table_checks_each_row_and_highlights_problems(window, qtbot, sample_root, tmp_path,
                                                            artifacts_dir):
    pairs = window.pairs
    assert pairs.add_dataset_root(sample_root) == 4
    _wait_checks(qtbot, window)
    texts = [pairs.table.item(r, 2).text() for r in range(4)]
    assert all(t.startswith("✔ 16×64×64") and t.endswith("classes 0,1,2") for t in texts), texts
    assert "uint8" in texts[2] and "uint16" in texts[0]  # the sample set mixes bit depths

    # A mask of another size: the row says so, in red, and Start would refuse it.
    write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
    pairs.add_pair(sample_root / "scans" / "bone_00", tmp_path / "short")
    _wait_checks(qtbot, window)
    assert "4x64x64" in pairs.table.item(4, 2).text()
    assert pairs.table.item(4, 0).background().color() == PROBLEM_BG
    assert pairs.problems() and pairs.problems()[0].startswith("row 5:")
    window.grab().save(str(artifacts_dir / "dlfit_pairs_problem.png"))

    # Dropped folders: a scan and a mask become one row; a dataset root adds all its pairs.
    _drop(pairs.table, [sample_root / "scans" / "bone_01", sample_root / "masks" / "bone_01"])
    assert pairs.rows()[5][:2] == (str(sample_root / "scans" / "bone_01"),
                                   str(sample_root / "masks" / "bone_01"))
    _drop(pairs.table, [sample_root])
    assert pairs.table.rowCount() == 10

    # No cap of 20 pairs (the paper's GUI limit).
    for _ in range(15):
        pairs.add_pair(sample_root / "scans" / "bone_02", sample_root / "masks" / "bone_02")
    _wait_checks(qtbot, window)
    assert pairs.table.rowCount() == 25
    assert len(pairs.problems()) == 1

    # Naming only two classes makes the label-2 masks a problem in their rows.
    pairs.set_class_count(2)
    _wait_checks(qtbot, window)
    assert len(pairs.problems()) == 25 and "label(s) 2" in pairs.problems()[0]
    pairs.set_class_count(None)
    _wait_checks(qtbot, window)

    pairs.table.selectRow(4)
    qtbot.mouseClick(pairs.remove_button, Qt.MouseButton.LeftButton)
    assert pairs.table.rowCount() == 24 and pairs.problems() == []
    assert pairs.count_label.text() == "24 pairs"
    window.grab().save(str(artifacts_dir / "dlfit_pairs.png"))


def test_modes_options_tooltips_config_file_and_memory(window, qtbot, settings, sample_root,
                                                      tmp_path, artifacts_dir):
    window.pairs.add_dataset_root(sample_root)
    window.out.set_path(tmp_path / "run")
    # Easy mode (the default): the recipe line, epochs, and no advanced options.
    assert not window.is_advanced()
    assert window.recipe.isVisible() and not window.scroll.isVisible()
    assert window.pairs.table.isColumnHidden(VALIDATION)
    window.easy_epochs.setValue(7)
    easy = window.config()
    assert easy.easy and easy.epochs == 7 and easy.arch == "Unet" and easy.encoder == "resnet18"
    assert easy.patch == 256 and easy.batch == 64 and len(easy.pairs) == 4

    qtbot.mouseClick(window.advanced_radio, Qt.MouseButton.LeftButton)
    assert window.is_advanced() and window.scroll.isVisible() and not window.recipe.isVisible()
    assert window.advanced.w["epochs"].value() == 7
    w = window.advanced.w
    # Every option, and every button, explains itself.
    missing = [k for k, widget in w.items() if len(widget.toolTip()) < 20]
    missing += [b.text() for b in window.findChildren(QPushButton) if not b.toolTip()]
    assert missing == []
    # Keyboard: every Alt+letter shortcut of the window leads to one place only.
    texts = [x.text() for kind in (QPushButton, QRadioButton, QLabel) for x in window.findChildren(kind)]
    texts += [g.title() for g in window.findChildren(QGroupBox)]
    letters = [t[t.index("&") + 1].lower() for t in texts if "&" in t and "&&" not in t]
    assert len(letters) >= 10 and len(letters) == len(set(letters)), letters
    # Engine messages name command-line flags; the window shows its own labels instead.
    assert plain_options("use --init random") == "use “Start from” (Initial weights) random"

    # Only architecture/encoder pairs that smp can build are offered.
    w["arch"].setCurrentIndex(w["arch"].findData("DeepLabV3Plus"))
    offered = [w["encoder"].itemData(i) for i in range(w["encoder"].count())]
    assert "resnet18" in offered and "vgg11" not in offered and "densenet121" not in offered
    assert "mit_b0" not in encoder_choices("UnetPlusPlus", "2d")
    assert "DPT" not in architecture_choices("2d")
    w["dims"].setCurrentIndex(w["dims"].findData("3d"))
    assert [w["arch"].itemData(i) for i in range(w["arch"].count())] == ["BasicUNet"]
    assert w["encoder"].currentData() == "tiny"
    assert not w["context"].isEnabled() and w["patch_depth"].isEnabled()
    w["dims"].setCurrentIndex(w["dims"].findData("2d"))
    w["arch"].setCurrentIndex(w["arch"].findData("FPN"))
    w["encoder"].setCurrentIndex(w["encoder"].findData("resnet34"))
    w["loss"].setCurrentIndex(w["loss"].findData("focal-tversky"))
    w["scheduler"].setCurrentIndex(w["scheduler"].findData("cosine-restarts"))
    w["lr"].setValue(3e-4)
    w["lr"].stepBy(1)  # 3e-4 -> 5e-4 along 1, 2, 5
    w["augment"].setChecked(False)
    assert not w["p_rotate"].isEnabled()
    w["class_names"].setText("background, bone, pores")
    window.pairs.table.item(1, VALIDATION).setCheckState(Qt.CheckState.Checked)
    config = window.config()
    assert (config.arch, config.encoder, config.loss, config.scheduler) == (
        "FPN", "resnet34", "focal-tversky", "cosine-restarts")
    assert config.lr == pytest.approx(5e-4) and not config.augment and not config.easy
    assert config.val_scans == ("bone_01",) and config.workers is None
    assert config.class_names == ("background", "bone", "pores")
    _wait_checks(qtbot, window)
    window.scroll.ensureWidgetVisible(w["arch"])
    window.grab().save(str(artifacts_dir / "dlfit_advanced_options.png"))

    # The JSON file is the one `bone fit --config` reads, and loads back into the widgets.
    path = window.save_config(tmp_path / "fit.json")
    assert FitConfig.load(path) == config
    w["arch"].setCurrentIndex(w["arch"].findData("Unet"))
    window.easy_radio.setChecked(True)
    window.load_config(path)
    assert window.is_advanced() and window.config() == config

    # Closing remembers the folders, mode, pairs and options for the next session.
    window.close()
    again = DLFitWindow(settings)
    qtbot.addWidget(again)
    assert again.is_advanced() and again.config() == config
    assert again.out.path() == tmp_path / "run"
    again.pairs.stop_checks()


def test_fit_stop_resume_to_weights_while_window_stays_responsive(window, qtbot, sample_root,
                                                                 tmp_path, artifacts_dir,
                                                                 one_torch_thread):
    window.pairs.add_dataset_root(sample_root)
    out = tmp_path / "run"
    _tiny(window, out, epochs=2)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    events: list[object] = []

    def watch(event: object) -> None:
        events.append(event)
        if isinstance(event, EpochEnd):
            qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)

    window.runner.progress.connect(watch)  # delivered on the GUI thread
    timer.start()
    qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
    assert window.runner.is_running() and window.stop_button.isEnabled()
    assert not window.start_button.isEnabled() and not window.pairs.isEnabled()
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=120000)
    assert window.last_error == ""
    stopped = window.runner.result
    assert stopped.status == "stopped" and stopped.epochs_done == 1
    assert (out / "checkpoint.pth").is_file()
    assert window.resume_button.isEnabled() and "Press Resume" in window.monitor.summary_label.text()
    assert any(isinstance(e, StepProgress) for e in events)
    assert len(window.monitor.loss_plot.series("train")) == 1
    window.grab().save(str(artifacts_dir / "dlfit_stopped.png"))

    # Reopening the folder later (here: another window) shows the run and offers Resume.
    other = DLFitWindow(AppSettings(f"dlfit-test-{uuid.uuid4().hex[:8]}"))
    qtbot.addWidget(other)
    assert not other.resume_button.isEnabled()
    other.out.set_path(out)
    assert other.resume_button.isEnabled() and "stopped run" in other.statusBar().currentMessage()
    assert len(other.monitor.iou_plot.series("validation")) == 1
    other.close()

    window.runner.progress.disconnect(watch)
    window.runner.progress.connect(events.append)
    qtbot.mouseClick(window.resume_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.runner.is_running(), timeout=120000)
    timer.stop()
    assert window.last_error == ""
    result = window.runner.result
    assert result.status == "completed" and result.model_path == out / "model.pth"
    _, meta = load_weights(result.model_path)
    assert meta["classes"] == 3 and meta["patch_size"] == 32
    # Curves keep epoch 1 from before the stop and add epoch 2.
    for plot in (window.monitor.loss_plot, window.monitor.iou_plot):
        assert [x for x, _ in plot.series("train")] == [1, 2]
        assert [x for x, _ in plot.series("validation")] == [1, 2]
    assert window.monitor.best_table.rowCount() == 3
    assert window.monitor.epoch_bar.value() == 2
    summary = window.monitor.summary_label.text()
    assert summary.startswith("Done") and f"best epoch {result.best_epoch} " in summary
    assert str(out / "model.pth") in summary
    assert "Time: " in summary
    assert "Learning rate: " in window.monitor.lr_label.text()
    assert "RAM: " in window.monitor.ram_label.text() and "GiB" in window.monitor.ram_label.text()
    assert "epoch 2/2" in window.monitor.log.toPlainText()

    # The GUI thread kept processing events all along: the timer never stalled for long.
    gaps = np.diff(ticks)
    assert len(ticks) > 20 and gaps.max() < 2.0, (len(ticks), gaps.max())

    # Starting again into the same folder asks first; Cancel leaves everything as it is.
    qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
    assert window.question is not None and len(_dialogs()) == 1
    window.question.button(QMessageBox.StandardButton.Cancel).click()
    assert not window.runner.is_running() and window.question is None

    window.grab().save(str(artifacts_dir / "dlfit_window_advanced.png"))

    # Choosing the fitted file as initial weights adopts its mode, architecture and encoder.
    w = window.advanced.w
    w["arch"].setCurrentIndex(w["arch"].findData("FPN"))
    w["init"].setCurrentIndex(w["init"].findData("file"))
    window.advanced.init_file.set_path(result.model_path)
    assert (w["dims"].currentData(), w["arch"].currentData(), w["encoder"].currentData()) == (
        "2d", "Unet", "resnet18")
    assert window.config().init == str(result.model_path)
    window.set_mode(advanced=False)
    window.grab().save(str(artifacts_dir / "dlfit_window_easy.png"))


@pytest.mark.parametrize("case", ["no_pairs", "no_out", "bad_pair", "augmentation", "engine",
                                  "nothing_to_resume", "bad_json", "bad_root"])
def test_bad_input_shows_one_dialog(window, qtbot, sample_root, tmp_path, case, artifacts_dir):
    if case not in ("no_pairs", "bad_root"):
        window.pairs.add_dataset_root(sample_root)
    _tiny(window, tmp_path / "run")
    if case == "no_out":
        window.out.edit.clear()
    elif case == "bad_pair":
        write_volume(tmp_path / "short", np.zeros((4, 64, 64), np.uint8))
        window.pairs.add_pair(sample_root / "scans" / "bone_00", tmp_path / "short")
        _wait_checks(qtbot, window)
    elif case == "augmentation":
        window.advanced.w["p_hflip"].setValue(0.6)
        window.advanced.w["p_vflip"].setValue(0.6)
    elif case == "engine":
        window.advanced.w["patch"].setValue(48)  # the engine wants a multiple of 32
    if case == "nothing_to_resume":
        window.resume()
    elif case == "bad_json":
        (tmp_path / "broken.json").write_text("{not json")
        window.load_config(tmp_path / "broken.json")
    elif case == "bad_root":
        window.pairs.add_dataset_root(tmp_path)  # no scans/ and masks/ inside
    else:
        qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.last_error != "" and not window.runner.is_running(),
                    timeout=60000)
    dialogs = _dialogs()
    assert len(dialogs) == 1 and dialogs[0].text() == window.last_error
    assert "Traceback" not in window.last_error
    expected = {"no_pairs": "at least two", "no_out": "output folder", "bad_pair": "4x64x64",
                "augmentation": "more than 1", "engine": "multiple of 32",
                "nothing_to_resume": "no stopped run", "bad_json": "not valid JSON",
                "bad_root": "not found"}[case]
    assert expected in window.last_error
    if case == "engine":
        dialogs[0].grab().save(str(artifacts_dir / "dlfit_error_dialog.png"))
        window.grab().save(str(artifacts_dir / "dlfit_error_window.png"))
    dialogs[0].close()
    assert window.start_button.isEnabled()


def test_offered_encoders_build_and_left_out_ones_do_not():
    """The rules in choices.py agree with smp itself (built on the meta device: no memory)."""
    import warnings

    import segmentation_models_pytorch as smp
    import torch

    from bone_apps.core.model.models import list_encoders

    def builds(arch: str, encoder: str) -> bool:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=1,
                                 classes=3)
            return True
        except (ValueError, KeyError, RuntimeError, NotImplementedError):
            return False

    every = list_encoders("2d")
    for arch in architecture_choices("2d"):
        offered = encoder_choices(arch, "2d")
        assert offered[0] == "resnet18"
        left_out = [e for e in every if e not in offered]
        # mit_b* cannot be built on the meta device at all, so they are not sampled here.
        for encoder in [e for e in offered if not e.startswith("mit_b")][:2] + left_out[:2]:
            assert builds(arch, encoder) == (encoder in offered), (arch, encoder)
