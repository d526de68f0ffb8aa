"""JobWorker: core generators run off the GUI thread, report, stop, and end promptly."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("PySide6")

from bone_apps.core.errors import BoneAppsError, Cancelled  # noqa: E402
from bone_apps.ui.worker import JobWorker  # noqa: E402


def _endless(stop):
    count = 0
    while True:
        if stop.is_set():
            raise Cancelled("stopped")
        count += 1
        yield count
        time.sleep(0.001)


def test_stop_then_wait_from_the_gui_thread_returns_at_once(qtbot):
    worker = JobWorker(_endless)
    seen = []
    worker.yielded.connect(seen.append)
    worker.start()
    qtbot.waitUntil(lambda: len(seen) > 3, timeout=5000)
    worker.stop()
    start = time.perf_counter()
    assert worker.wait(10000)  # a queued quit would block here until the timeout
    assert time.perf_counter() - start < 2


def test_results_errors_and_cancellation_reach_their_signals(qtbot):
    def finite(stop):
        yield 1
        return "done"

    def failing(stop):
        yield 1
        raise BoneAppsError("scan.tif is not a TIFF: choose another file.")

    def buggy(stop):
        yield 1
        raise ZeroDivisionError("division by zero")

    for factory, signal_name, expected in ((finite, "returned", "done"),
                                           (failing, "errored", "scan.tif is not a TIFF"),
                                           (buggy, "errored", "did not expect")):
        worker = JobWorker(factory)
        with qtbot.waitSignal(getattr(worker, signal_name), timeout=5000) as blocker:
            with qtbot.waitSignal(worker.finished, timeout=5000):
                worker.start()
        assert expected in str(blocker.args[0])
        assert "Traceback" not in str(blocker.args[0])
        worker.wait()

    worker = JobWorker(_endless)
    with qtbot.waitSignal(worker.cancelled, timeout=5000):
        worker.start()
        worker.stop()
    worker.wait()
