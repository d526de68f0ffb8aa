"""The plumbing that drives core jobs (core.jobs.run): run_to_end, relay and
records_from_thread, which fitting, prediction and the experiments share."""

from __future__ import annotations

import threading

import pytest

from bone_apps.core.errors import Cancelled
from bone_apps.core.jobs.run import records_from_thread, relay, run_to_end


def _job(closed: list):
    try:
        yield 1
        yield 2
        return "done"
    finally:
        closed.append(True)


def test_run_to_end_passes_every_record_and_returns_the_result():
    seen, closed = [], []
    assert run_to_end(_job(closed), seen.append) == "done"
    assert seen == [1, 2] and closed == [True]
    assert run_to_end(_job([])) == "done"


def test_an_error_of_the_caller_closes_the_job():
    closed = []

    def refuse(_record):
        raise KeyError("caller")

    with pytest.raises(KeyError):
        run_to_end(_job(closed), refuse)
    assert closed == [True]


def test_relay_wraps_records_and_hands_back_the_inner_result():
    closed = []

    def outer():
        value = yield from relay(_job(closed), lambda record: ("inner", record))
        yield ("outer", value)
        return value

    seen = []
    assert run_to_end(outer(), seen.append) == "done"
    assert seen == [("inner", 1), ("inner", 2), ("outer", "done")] and closed == [True]
    # Closing the outer job closes the inner one.
    closed.clear()
    job = outer()
    next(job)
    job.close()
    assert closed == [True]


def test_records_from_thread_forwards_records_value_and_error():
    def work(emit):
        for i in range(3):
            emit(i)
        return threading.current_thread().name

    seen = []
    assert run_to_end(records_from_thread(work, "bone-test-helper"), seen.append) == "bone-test-helper"
    assert seen == [0, 1, 2]

    def broken(_emit):
        raise ValueError("bad volume")

    with pytest.raises(ValueError, match="bad volume"):
        run_to_end(records_from_thread(broken, "bone-test-helper"))


def test_a_stop_ends_records_from_thread_without_waiting_for_the_work():
    stop, release = threading.Event(), threading.Event()

    def slow(emit):
        emit("started")
        release.wait(10)
        return "late"

    def on_record(_record):
        stop.set()

    with pytest.raises(Cancelled, match="stopped while checking"):
        run_to_end(records_from_thread(slow, "bone-test-helper", stop, "stopped while checking."),
                   on_record)
    release.set()
