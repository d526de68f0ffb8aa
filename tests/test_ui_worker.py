"""JobWorker: core generators run off the GUI thread, report, stop, and end promptly."""

from __future__ import annotations

import gc
import threading
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


def test_garbage_is_collected_on_the_gui_thread_while_workers_run(qtbot):
    """A collection started in a worker thread would free dead windows' Qt objects off the GUI
    thread, which crashes the process: while workers run, collections happen on the GUI thread
    only, and they still happen."""
    collections: list[bool] = []  # per collection: did it run on the GUI (main) thread?

    def record(phase: str, _info: dict) -> None:
        if phase == "start":
            collections.append(threading.current_thread() is threading.main_thread())

    def making_cyclic_garbage(stop):
        rounds = 0
        while not stop.is_set():
            for _ in range(200):  # what only the cyclic collector frees, as a closed window
                cycle: list = []
                cycle.append(cycle)
            rounds += 1
            if rounds % 10 == 0:
                yield rounds
            time.sleep(0.001)

    assert gc.isenabled()
    gc.callbacks.append(record)
    worker = JobWorker(making_cyclic_garbage)
    try:
        worker.start()
        assert not gc.isenabled()  # automatic collection is off while a worker runs
        qtbot.waitUntil(lambda: len(collections) >= 3, timeout=10000)
    finally:
        worker.stop()
        assert worker.wait(10000)
        gc.callbacks.remove(record)
    assert all(collections)
    assert gc.isenabled()  # and automatic again once the last worker has ended
