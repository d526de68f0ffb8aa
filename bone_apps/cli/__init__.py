"""The `bone` command: parse options, build a core config, run core, print results.

Each subcommand lives in its own module of this package with `register(subparsers)`, which
adds its parser and sets `func` to a `run(args) -> int`. Modules import heavy libraries
(torch, smp) inside `run`, so `bone --help` stays fast and needs no display.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bone_apps import __version__
from bone_apps.core.errors import BoneAppsError

COMMANDS = ("synth", "iou", "fit", "predict")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bone`; returns the exit code."""
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
    except KeyboardInterrupt:
        print(f"bone {args.command}: stopped.", file=sys.stderr)
        return 130
    except OSError as exc:
        # A full disk, a read-only folder or a vanished folder met outside the writers that
        # already say so in one sentence (e.g. while saving a checkpoint).
        from bone_apps.core.outputs import HANDLED_ERRNOS, os_error_sentence

        if exc.errno not in HANDLED_ERRNOS:
            raise
        print(f"bone {args.command}: {os_error_sentence(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
