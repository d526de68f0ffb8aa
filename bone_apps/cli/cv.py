"""`bone cv`: scan-level K-fold cross-validation over several seeds (the paper's Table 6)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from bone_apps.cli.fit import add_fit_options

# Fit options an experiment sets itself: its folder (--out, with its own help), the seeds
# (--seeds), and continuing (running the same command again does it).
_LEFT_OUT = ("out", "resume", "overwrite", "list_models", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cv", help="K-fold cross-validation of whole scans over several seeds (Table 6)",
        description="Put the scans in a fixed order (--order FILE, or shuffled once with "
                    "--order-seed), cut it into K test folds of whole scans, and for every fold "
                    "and seed fit a model on the other scans (split into training and validation "
                    "by that seed) into OUT/fold{f}_seed{s}/, predict the fold's test scans into "
                    "OUT/fold{f}_seed{s}/pred/ and score them. Writes OUT/folds.json first, then "
                    "OUT/cv.json, cv.csv, cv.md (laid out like the paper's Table 6) and cv.png. "
                    "Run the same command again to continue after a stop: finished fits are "
                    "kept and an unfinished one resumes. Takes the `bone fit` options but --seed "
                    "(the seeds are --seeds), --resume and --overwrite (running again continues).",
        argument_default=None)
    cv = parser.add_argument_group("cross-validation")
    cv.add_argument("--out", type=Path, required=True, metavar="DIR", help="experiment folder")
    cv.add_argument("--folds", type=int, default=5, metavar="K", help="test folds (5)")
    cv.add_argument("--seeds", type=int, nargs="+", default=[42], metavar="SEED",
                    help="fit seeds, one replicate of every fold each (42; the paper: 42 1701 1864)")
    order = cv.add_mutually_exclusive_group()
    order.add_argument("--order-seed", type=int, metavar="N",
                       help="shuffle the scans once with this seed to fix their order (42)")
    order.add_argument("--order", type=Path, metavar="FILE",
                       help="the scan order as a text file: one scan ID per line, or a table like "
                            "the paper's Table 3 (order, scan ID, test fold)")
    add_fit_options(parser, leave_out=_LEFT_OUT)
    parser.set_defaults(func=run, command="cv")


class ExperimentConsole:
    """Prints an experiment's records: one line per run and per scored scan, each fit's epoch
    lines and notes, progress bars for fitting and prediction."""

    def __init__(self) -> None:
        from bone_apps.cli.fit import FitConsole

        self.fit = FitConsole(enabled=True)
        self.bar = None
        self.result = None

    def close(self) -> None:
        self.fit.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def show(self, event) -> None:
        from bone_apps.core.evaluate.runs import RunProgress, RunStarted, ScanScored

        if isinstance(event, RunStarted):
            self.close()
            where = {"fit": "fitting into", "refit": "fitting again (the earlier attempt saved no "
                     "checkpoint) into", "resume": "resuming the fit in",
                     "kept": "fit finished earlier, kept:"}[event.action]
            print(f"[{event.index + 1}/{event.total}] {event.label}: {where} {event.out}")
        elif isinstance(event, RunProgress):
            self._progress(event.event)
        elif isinstance(event, ScanScored):
            self.close()
            row = event.row
            print(f"  {row['scan']}: mIoU {_num(row['miou'])} [mDice {_num(row['mdice'])}]")
        elif hasattr(event, "result"):
            self.close()
            self.result = event.result
        elif hasattr(event, "text"):
            print(event.text)

    def _progress(self, event) -> None:
        from tqdm import tqdm

        from bone_apps.core.data.normalize import StatsProgress
        from bone_apps.core.fit.records import FitMessage
        from bone_apps.core.predict.reports import ScanStarted, SliceProgress

        if isinstance(event, FitMessage):
            if event.level == "note":  # the setup lines are in the run's fit.log
                self.fit.show(event)
        elif isinstance(event, ScanStarted):
            self.close()
            self.bar = tqdm(total=event.shape[0], unit="slice", desc=f"  predicting {Path(event.scan).name}",
                            file=sys.stderr, disable=None, leave=False)
        elif isinstance(event, SliceProgress):
            if self.bar is not None:
                self.bar.update(event.done - self.bar.n)
        elif type(event).__module__ == "bone_apps.core.fit.records" or isinstance(event, StatsProgress):
            self.fit.show(event)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_experiment(start: Callable[[threading.Event], Iterator], command: str) -> tuple[object, int | None]:
    """Run an experiment (`start(stop)` gives its generator) with an ExperimentConsole, the first
    Ctrl-C or SIGTERM stopping it at a safe point: (its completed result, None), or (None, the
    exit code) when it stopped, having said how to continue."""
    import signal

    from bone_apps.cli.fit import stop_on_signals
    from bone_apps.core.errors import Cancelled

    console = ExperimentConsole()
    with stop_on_signals() as stop:
        try:
            for event in start(stop):
                console.show(event)
        except Cancelled as exc:  # stopped during a fit's data checks: nothing to continue there
            if not stop.is_set():
                raise
            from bone_apps.cli import end_worker_processes

            end_worker_processes()
            print(f"bone {command}: {exc}", file=sys.stderr)
            return None, 128 + int(getattr(stop, "signal", signal.SIGINT))
        finally:
            console.close()
    if console.result.status != "completed":
        print(f"bone {command}: stopped. Run the same command again to continue: finished fits and "
              "label stacks are kept, and an unfinished fit resumes from its checkpoint.", file=sys.stderr)
        return None, 128 + int(getattr(stop, "signal", signal.SIGINT))
    print()
    return console.result, None


def run(args: argparse.Namespace) -> int:
    from bone_apps.cli.fit import build_config
    from bone_apps.core.evaluate.cv import CVConfig, cross_validate

    template = build_config(args)
    config = CVConfig(fit=template, out=str(args.out), folds=args.folds, seeds=tuple(args.seeds),
                      order_seed=args.order_seed,
                      order_file=None if args.order is None else str(args.order))
    result, code = run_experiment(lambda stop: cross_validate(config, stop), "cv")
    if code is not None:
        return code
    print(result.files["markdown"].read_text(encoding="utf-8"), end="")
    shown = ", ".join(str(p) for p in result.files.values() if p is not None)
    print(f"written: {shown}")
    if result.files["plot"] is None:
        print("note: cv.png was not drawn because matplotlib is not installed (pip install matplotlib).")
    return 0
