"""IoU's "Where it fails" tab driven through the real widgets, and windows built by user code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QColor, QImage  # noqa: E402

from bone_apps.core.io.volume import open_volume  # noqa: E402
from bone_apps.core.io.writer import write_volume  # noqa: E402
from bone_apps.core.score.error_map import ErrorKind, count_errors, error_map  # noqa: E402
from bone_apps.iou.errors_tab import ERROR_COLOURS  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402


@pytest.fixture
def window(qtbot):
    win = IoUWindow()
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    if win.worker is not None:
        win.worker.stop()
        win.worker.wait()


def _pair(sample_root, tmp_path):
    reference = sample_root / "masks" / "bone_01"
    mask = open_volume(reference, role="mask").read_slab(0, 16)
    prediction = mask.copy()
    prediction[8:, :, ::5] = 0  # bone and pores missed: false negatives
    prediction[8:, ::7, :] = 1  # bone where there is none: false positives
    write_volume(tmp_path / "pred", prediction)
    return reference, tmp_path / "pred", mask, prediction


def _compute(window, qtbot, reference, prediction):
    window.reference.set_path(reference)
    window.prediction.set_path(prediction)
    window.class_names.setText("background,bone,pores")
    qtbot.mouseClick(window.compute_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.result is not None and window.worker is None, timeout=30000)


def _colour_pixels(image: QImage, colour: str) -> int:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    rgb = rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3)
    c = QColor(colour)
    return int(np.all(rgb == (c.red(), c.green(), c.blue()), axis=2).sum())


def test_error_map_marks_false_positives_and_negatives():
    reference = np.array([[0, 1, 1], [2, 1, 0]])
    prediction = np.array([[1, 1, 0], [1, 2, 0]])
    errors = error_map(reference, prediction, 1)
    assert errors.tolist() == [[1, 0, 2], [1, 2, 0]]
    counts = count_errors(errors)
    assert (counts.false_positives, counts.false_negatives) == (2, 2)


def test_click_plot_shows_slice_errors(window, qtbot, sample_root, tmp_path, artifacts_dir):
    reference, prediction, mask, pred = _pair(sample_root, tmp_path)
    assert not window.errors.has_pair()
    _compute(window, qtbot, reference, prediction)
    assert window.errors.has_pair()
    assert window.tabs.currentIndex() == 0  # the scores stay in front until a slice is asked for

    k = 11
    y = window.plot.series("mean IoU")[k][1]
    with qtbot.waitSignal(window.plot.clicked) as clicked:
        qtbot.mouseClick(window.plot, Qt.MouseButton.LeftButton,
                         pos=window.plot.to_screen(k, y).toPoint())
    assert clicked.args == [k]
    assert window.tabs.currentWidget() is window.errors
    view = window.errors.view
    assert view.z() == k and view.labels_shown
    assert f"Slice {k} of" in view.info.text()

    view.zoom.setCurrentIndex(view.zoom.findData(1.0))  # one pixel per voxel: countable
    view.opacity.setValue(100)  # overlay colours exactly, never blended with grey
    for label in (1, 2):
        window.errors.class_box.setCurrentIndex(window.errors.class_box.findData(label))
        fp = int(np.sum((pred[k] == label) & (mask[k] != label)))
        fn = int(np.sum((mask[k] == label) & (pred[k] != label)))
        assert fp + fn > 0
        counts = window.errors.counts
        assert (counts.false_positives, counts.false_negatives) == (fp, fn)
        image = view.canvas.image
        assert _colour_pixels(image, ERROR_COLOURS[ErrorKind.FALSE_POSITIVE]) == fp
        assert _colour_pixels(image, ERROR_COLOURS[ErrorKind.FALSE_NEGATIVE]) == fn
        assert f"{fp:,} false positive and {fn:,} false negative" in window.errors.counts_label.text()
    assert "false positive (predicted pores" in view.legend.text()

    # An untouched slice shows no errors.
    qtbot.mouseClick(window.plot, Qt.MouseButton.LeftButton, pos=window.plot.to_screen(2, 1.0).toPoint())
    assert view.z() == 2
    assert (window.errors.counts.false_positives, window.errors.counts.false_negatives) == (0, 0)

    view.zoom.setCurrentIndex(0)
    view.opacity.setValue(75)
    qtbot.mouseClick(window.plot, Qt.MouseButton.LeftButton, pos=window.plot.to_screen(k, y).toPoint())
    window.errors.class_box.setCurrentIndex(window.errors.class_box.findData(1))
    assert window.size().width() == 1280 and window.size().height() == 800
    window.grab().save(str(artifacts_dir / "iou_where_it_fails.png"))

    # Fields naming another pair clear the tab; naming the scored pair again brings it back.
    window.class_names.setText("background,bone")
    assert not window.errors.has_pair() and not view.labels_shown
    window.class_names.setText("background,bone,pores")
    assert window.errors.has_pair()
    window.compute()
    assert not window.errors.has_pair()  # a new run starts from an empty tab
    qtbot.waitUntil(lambda: window.worker is None, timeout=30000)
    assert window.errors.has_pair()


def test_plot_click_away_from_points_does_nothing(window, qtbot):
    window.plot.set_series("mean IoU", [(0, 0.5), (1, 0.7)])
    with qtbot.assertNotEmitted(window.plot.clicked):
        qtbot.mouseClick(window.plot, Qt.MouseButton.LeftButton, pos=window.plot.rect().center())
    assert window.tabs.currentIndex() == 0


# Windows created inside a function by user code: Python frees them in its own order on return
# and at exit, which must never abort the process.
USER_SCRIPT = textwrap.dedent("""
    import sys
    from PySide6.QtWidgets import QApplication
    from bone_apps.dlfit.window import DLFitWindow
    from bone_apps.dlpred.window import DLPredWindow
    from bone_apps.iou.window import IoUWindow

    def main():
        app = QApplication(sys.argv)
        windows = [DLFitWindow(), DLPredWindow(), IoUWindow()]
        for window in windows:
            window.show()
        for _ in range(5):
            app.processEvents()
        return 0

    if __name__ == "__main__":
        code = main()
        print("returned", flush=True)
        sys.exit(code)
""")


@pytest.mark.parametrize("close", [False, True], ids=["left-open", "closed"])
def test_windows_built_in_a_function_exit_cleanly(tmp_path, close):
    script = USER_SCRIPT if not close else USER_SCRIPT.replace(
        "        return 0", "        for window in windows:\n            window.close()\n"
        "        app.processEvents()\n        return 0")
    (tmp_path / "user.py").write_text(script)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(tmp_path / "user.py")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "returned" in done.stdout
    assert "QObject" not in done.stderr and "Fatal" not in done.stderr, done.stderr[-3000:]


RUNNING_JOB_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from PySide6.QtWidgets import QApplication
    from bone_apps.core.io.writer import write_volume
    from bone_apps.iou.window import IoUWindow

    def main(folder):
        app = QApplication(sys.argv)
        write_volume(folder, np.zeros((300, 128, 128), np.uint8))
        window = IoUWindow()
        window.reference.set_path(folder)
        window.prediction.set_path(folder)
        window.show()
        window.compute()  # still scoring when the function returns and the window is freed
        app.processEvents()
        return 0

    if __name__ == "__main__":
        code = main(Path(sys.argv[1]))
        print("returned", flush=True)
        sys.exit(code)
""")


def test_window_freed_while_scoring_exits_cleanly(tmp_path):
    (tmp_path / "user.py").write_text(RUNNING_JOB_SCRIPT)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, str(tmp_path / "user.py"), str(tmp_path / "zeros")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "returned" in done.stdout
    assert "QThread" not in done.stderr and "Fatal" not in done.stderr, done.stderr[-3000:]
