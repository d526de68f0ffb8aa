"""`bone shortcuts`: desktop and start-menu entries for DLFit, DLPred and IoU."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shortcuts", help="add (or --remove) desktop and start-menu entries for the three apps",
        description="Add desktop and start-menu entries that open DLFit, DLPred and IoU with a "
                    "double-click. --remove takes away the entries this command made, and only "
                    "those; an entry of the same name made by anything else is never replaced.")
    parser.add_argument("--remove", action="store_true", help="remove the entries made before")
    parser.add_argument("--desktop", action=argparse.BooleanOptionalAction, default=True,
                        help="put entries on the desktop (default: yes)")
    parser.add_argument("--menu", action=argparse.BooleanOptionalAction, default=True,
                        help="put entries in the start menu / applications menu (default: yes)")
    parser.set_defaults(func=run, command="shortcuts")


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.desktop import shortcuts

    if args.remove:
        removed = shortcuts.remove_all()
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("no shortcuts made by bone_apps were found: nothing to remove")
        return 0
    if not (args.desktop or args.menu):
        print("nothing to do: --no-desktop and --no-menu leave no place for shortcuts")
        return 2
    for path in shortcuts.create(args.desktop, args.menu):
        print(f"created {path}")
    return 0
