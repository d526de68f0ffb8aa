"""Driving core jobs: every long task of the core is a generator that yields progress records
and returns its result; front ends without an event loop of their own run it with run_to_end.
Work that reports through a callback instead (a pool of processes, a library call) becomes
such a generator with records_from_thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

from bone_apps.core.errors import Cancelled

Event = TypeVar("Event")
Result = TypeVar("Result")
Wrapped = TypeVar("Wrapped")


def run_to_end(job: Generator[Event, None, Result],
               on_event: Callable[[Event], None] | None = None) -> Result:
    """Drive `job` to its end, passing each record to `on_event`, and return its result.

    The job is closed when the caller is interrupted (Ctrl-C, an error in `on_event`), so its
    own clean-up (partial outputs removed, files closed) runs before the exception goes on.
    """
    events = relay(job, on_event or _ignore)
    try:
        while True:
            next(events)
    except StopIteration as done:
        return done.value
    finally:
        events.close()


def _ignore(_event: object) -> None:
    return None


def relay(job: Generator[Event, None, Result],
          wrap: Callable[[Event], Wrapped]) -> Generator[Wrapped, None, Result]:
    """Yield `wrap(record)` for each record of `job` and return its result: a job inside a
    larger one (a fit inside an experiment, a measure inside a comparison). The inner job is
    closed when the outer one is."""
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                return done.value
            yield wrap(event)
    finally:
        job.close()


def records_from_thread(work: Callable[[Callable[[Event], None]], Result], name: str,
                        stop: threading.Event | None = None,
                        stopped: str = "the job was stopped.") -> Generator[Event, None, Result]:
    """Run `work(emit)` in a helper thread, yielding each record it emits, and return its value.

    An exception of `work` is raised here, in the generator's thread. With `stop`, a stop
    request ends the job between records (at most 0.1 s late) with Cancelled(`stopped`),
    without waiting for the thread: it is a daemon, left to finish or die with the process
    (a stop that also ended its processes, as Ctrl-C does, counts as the stop).
    """
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work(events.put)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the generator's thread
            outcome["error"] = exc

    def check() -> None:
        if stop is not None and stop.is_set():
            raise Cancelled(stopped)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    while thread.is_alive() or not events.empty():
        check()
        try:
            yield events.get(timeout=0.1)
        except queue.Empty:
            pass
    thread.join()
    check()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
