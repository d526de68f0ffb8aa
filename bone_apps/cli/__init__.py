"""The `bone` command: parse options, build a core config, run core, print results.

Each subcommand lives in its own module of this package with `register(subparsers)`, which
adds its parser and sets `func` to a `run(args) -> int`. Modules import heavy libraries
(torch, smp) inside `run`, so `bone --help` stays fast and needs no display.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from bone_apps import __version__
from bone_apps.core.errors import BoneAppsError

COMMANDS = ("synth", "iou", "fit", "predict", "measure", "clean", "export", "cv", "bench", "rank",
            "shortcuts")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `bone` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bone",
        description="Segment bone and pores in micro-CT scans: make sample scans, fit models, "
                    "predict label stacks and score them.")
    parser.add_argument("--version", action="version", version=f"bone_apps {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bone_apps.cli.{name}").register(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: the same clean-up runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bone`; returns the exit code.

    Ctrl-C and SIGTERM end every command within about a second with one line, leaving what
    a Stop leaves: `bone fit` saves a checkpoint to resume from (a second signal aborts at
    once), other commands remove the outputs they had not finished. Exit codes: 0 done,
    2 a problem the message explains, 130 Ctrl-C, 143 SIGTERM.
    """
    from bone_apps.core.fit.runfiles import quiet_library_warnings

    quiet_library_warnings()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BoneAppsError as exc:
        print(f"bone {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        end_worker_processes()
        print(f"bone {args.command}: stopped.", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except OSError as exc:
        # A full disk, a read-only folder or a vanished folder met outside the writers that
        # already say so in one sentence (e.g. while saving a checkpoint).
        from bone_apps.core.io.outputs import HANDLED_ERRNOS, os_error_sentence

        if exc.errno not in HANDLED_ERRNOS:
            raise
        print(f"bone {args.command}: {os_error_sentence(exc)}", file=sys.stderr)
        return 2


def run_with_bar(job, unit: str, desc: str, min_total: int = 0):
    """Drive a core job to its result with a tqdm bar on stderr, shown once a record's total
    reaches `min_total`; a record's `stage`, when it has one, names the bar."""
    from bone_apps.core.jobs.run import run_to_end

    bar = None

    def show(progress) -> None:
        nonlocal bar
        if bar is None and progress.total >= min_total:
            from tqdm import tqdm

            bar = tqdm(total=progress.total, unit=unit, desc=desc, file=sys.stderr, disable=None,
                       leave=False)
        if bar is not None:
            bar.total = progress.total
            if getattr(progress, "stage", None) is not None:
                bar.set_description(progress.stage, refresh=False)
            bar.update(progress.done - bar.n)

    try:
        return run_to_end(job, show)
    finally:
        if bar is not None:
            bar.close()


def end_worker_processes() -> None:
    """After a stop: end the worker processes this command started (e.g. scan statistics
    still being computed), so that it exits now rather than when they finish."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()


if __name__ == "__main__":
    sys.exit(main())
