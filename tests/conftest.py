"""Shared fixtures: tiny sample datasets on disk, headless Qt, an artifacts folder."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

# Qt must never need a display in tests.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Remembered folders and options go to a throw-away place, never the user's own settings.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="bone-apps-settings-")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder (ignored by git) for screenshots and other files a person may want to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's fits: fast and steady on a small shared machine.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A statistics cache for one test module."""
    return tmp_path_factory.mktemp("stats-cache")


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny sample scans (16x64x64) with masks: ROOT/scans/<id>, ROOT/masks/<id>.

    Session-wide and read-only: tests that change files make their own copy.
    """
    from bone_apps.core.data.synthetic import write_sample_dataset

    root = tmp_path_factory.mktemp("samples")
    write_sample_dataset(root, scans=4, seed=0, shape=(16, 64, 64))
    return root


@pytest.fixture(autouse=True)
def no_dangling_threads():
    """Fail a test that leaves a non-daemon thread running (a worker that never stopped)."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate()
                if t not in before and t.is_alive() and not t.daemon]
    for thread in leftover:
        thread.join(timeout=5)
    still = [t.name for t in leftover if t.is_alive()]
    assert not still, f"threads left running: {still}"


@pytest.fixture(scope="session", autouse=True)
def qt_cleanup_at_exit():
    """Delete every window and finished worker while Qt is still fully alive.

    Left to interpreter shutdown, Qt objects owned by Python are destroyed in arbitrary order,
    which can abort the process after all tests passed.
    """
    yield
    import gc
    import sys

    if "PySide6.QtWidgets" not in sys.modules:
        return
    from PySide6.QtCore import QCoreApplication, QEvent
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    for widget in QApplication.topLevelWidgets():
        widget.close()
        widget.deleteLater()
    for _ in range(3):
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
        gc.collect()
