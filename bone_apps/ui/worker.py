"""Run a core job generator off the GUI thread and relay its progress as Qt signals."""

from __future__ import annotations

import atexit
import gc
import threading
import traceback
from collections.abc import Callable, Generator

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, QTimer, Signal

from bone_apps.core.errors import BoneAppsError, Cancelled

JobFactory = Callable[[threading.Event], Generator]
# Workers whose thread still runs. They are kept alive here so that a window freed mid-job (a
# window and QApplication that were locals of a user's function) cannot destroy a running
# QThread, which aborts the process; at exit they are stopped and waited for.
_LIVE: set[JobWorker] = set()


class _GuiThreadGarbage:
    """Python's cyclic garbage collection, done on the GUI thread while workers run.

    Automatic collection starts in whichever thread allocates when a threshold is passed. If
    that is a worker thread and the garbage holds a closed window's cycle, Qt widgets are
    destroyed off the GUI thread and the process crashes. So while any worker runs, automatic
    collection is off and a timer on the GUI thread collects the generations whose thresholds
    are passed; when the last worker ends, collection is automatic again.
    """

    def __init__(self) -> None:
        self._timer: QTimer | None = None
        self._was_enabled = True

    def workers_started(self) -> None:
        if self._timer is not None:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QTimer()
        self._timer.timeout.connect(self._collect)
        self._timer.start(250)

    def workers_ended(self) -> None:
        if self._timer is None:
            return
        self._timer.stop()
        self._timer.deleteLater()
        self._timer = None
        if self._was_enabled:
            gc.enable()

    @staticmethod
    def _collect() -> None:
        counts, thresholds = gc.get_count(), gc.get_threshold()
        if counts[0] > thresholds[0]:
            generation = 2 if counts[2] > thresholds[2] else 1 if counts[1] > thresholds[1] else 0
            gc.collect(generation)


_GARBAGE = _GuiThreadGarbage()


def _keep(worker: JobWorker) -> None:
    _LIVE.add(worker)
    _GARBAGE.workers_started()


def _forget(worker: JobWorker) -> None:
    _LIVE.discard(worker)
    if not _LIVE:
        _GARBAGE.workers_ended()


class JobWorker(QObject):
    """Drives a core generator in a QThread.

    `factory(stop_event)` must return the generator; the worker sets `stop_event` on `stop()`
    so the job ends at its next safe point. Signals (delivered on the GUI thread):
    `yielded(record)` for each progress record, `returned(value)` with the generator's return
    value, `errored(message)` with one plain sentence, `cancelled()`, then always `finished()`.
    """

    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, factory: JobFactory, *, yielded: Callable | None = None,
                 returned: Callable | None = None, errored: Callable | None = None,
                 cancelled: Callable | None = None, finished: Callable | None = None) -> None:
        """The slots given are connected to the signals of their names (pass methods of objects
        living on the GUI thread, so that Qt runs them there)."""
        super().__init__()
        self._factory = factory
        self.stop_event = threading.Event()
        self._thread = QThread()
        self._thread.setObjectName("bone-apps-worker")
        self.moveToThread(self._thread)
        self._thread.started.connect(self._run)
        # Direct: quit from the worker thread itself, so a GUI-thread wait() (closing a window
        # mid-run) cannot block the very event that would end the thread.
        self.finished.connect(self._thread.quit, Qt.ConnectionType.DirectConnection)
        self._thread.finished.connect(self._release)
        for signal, slot in ((self.yielded, yielded), (self.returned, returned), (self.errored, errored),
                             (self.cancelled, cancelled), (self.finished, finished)):
            if slot is not None:
                signal.connect(slot)

    def start(self) -> None:
        _keep(self)
        self._thread.start()

    def _release(self) -> None:
        """The thread has ended: the worker no longer needs keeping alive."""
        self._thread.wait()
        _forget(self)

    def stop(self) -> None:
        """Ask the job to end at its next safe point."""
        self.stop_event.set()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30000) -> bool:
        """Block until the thread has ended (for closing a window and for tests)."""
        ended = self._thread.wait(msecs)
        if ended:
            _forget(self)
        return ended

    def _run(self) -> None:
        try:
            job = self._factory(self.stop_event)
            while True:
                try:
                    record = next(job)
                except StopIteration as done:
                    self.returned.emit(done.value)
                    break
                self.yielded.emit(record)
        except Cancelled:
            self.cancelled.emit()
        except BoneAppsError as exc:
            self.errored.emit(exc.shown(as_label=True))
        except MemoryError:
            self.errored.emit("The computer ran out of memory: close other programs or use "
                              "smaller settings, then try again.")
        except Exception as exc:  # noqa: BLE001 - a bug must reach the user as a dialog, not a crash
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.errored.emit(f"Something went wrong that bone_apps did not expect ({detail}). "
                              "Please report it with the steps that led here.")
        finally:
            # Hand this object back to the GUI thread, so that deleting it later (deleteLater
            # or Python's garbage collector) happens in a thread with a running event loop.
            app = QCoreApplication.instance()
            if app is not None:
                self.moveToThread(app.thread())
            self.finished.emit()


def dispose(worker: JobWorker | None) -> None:
    """Let a finished worker's thread end and delete the worker later; returns None, for
    `self.worker = dispose(self.worker)` in a `finished` slot."""
    if worker is not None:
        worker.wait()
        worker.deleteLater()


@atexit.register
def _stop_live_workers() -> None:
    """At interpreter exit, before Qt's own clean-up: stop every running job and wait for it."""
    for worker in list(_LIVE):
        worker.stop()
        worker.wait()
