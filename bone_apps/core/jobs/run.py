"""Driving core jobs: every long task of the core is a generator that yields progress records
and returns its result; front ends without an event loop of their own run it with run_to_end.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

Event = TypeVar("Event")
Result = TypeVar("Result")


def run_to_end(job: Generator[Event, None, Result],
               on_event: Callable[[Event], None] | None = None) -> Result:
    """Drive `job` to its end, passing each record to `on_event`, and return its result.

    The job is closed when the caller is interrupted (Ctrl-C, an error in `on_event`), so its
    own clean-up (partial outputs removed, files closed) runs before the exception goes on.
    """
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                return done.value
            if on_event is not None:
                on_event(event)
    finally:
        job.close()
