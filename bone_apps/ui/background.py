"""Short background jobs for windows (open a scan, read a weights file) and a safe way to wait.

`BackgroundTask(owner, fn, done, failed)` runs `fn()` in a JobWorker and calls `done(value)` or
`failed(message)` on the GUI thread. `join_worker(worker)` waits for any JobWorker to end from
the GUI thread (for closeEvent).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, Signal

from bone_apps.ui.worker import JobWorker


def join_worker(worker: JobWorker, timeout_s: float = 30.0) -> bool:
    """Wait for a worker's thread to end; True when it did.

    JobWorker quits its thread through a call queued on the GUI thread, so a plain wait() on
    the GUI thread would block that very call until its timeout: keep processing events.
    """
    deadline = time.monotonic() + timeout_s
    while worker.is_running() and time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        worker.wait(20)
    return not worker.is_running()


class BackgroundTask(QObject):
    """One short job off the GUI thread; `done`/`failed` run on the GUI thread afterwards.

    The task parents itself to `owner` and deletes itself when finished (`ended` fires first).
    Slots are methods of this QObject, so Qt queues them to the GUI thread; plain lambdas
    connected to a worker's signals could run on the worker's thread.
    """

    ended = Signal()

    def __init__(self, owner: QObject, fn: Callable[[], object], done: Callable[[object], None],
                 failed: Callable[[str], None]) -> None:
        super().__init__(owner)
        self._done, self._failed = done, failed

        def job(stop):
            return fn()
            yield  # a generator, as JobWorker expects

        self.worker = JobWorker(job, returned=self._on_returned, errored=self._on_errored,
                                finished=self._on_finished)
        self.worker.start()

    def _on_returned(self, value: object) -> None:
        self._done(value)

    def _on_errored(self, message: str) -> None:
        self._failed(message)

    def _on_finished(self) -> None:
        self.worker.wait()  # the thread's quit was queued before this slot: it ends at once
        self.worker.deleteLater()
        self.ended.emit()
        self.deleteLater()
