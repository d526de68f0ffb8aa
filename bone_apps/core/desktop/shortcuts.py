"""Desktop and start-menu entries for the three apps, made with pyshortcuts and recorded in a
manifest so that removing them takes away exactly what bone_apps created.

The manifest is `<config dir>/bone_apps/shortcuts.json` (config dir: $XDG_CONFIG_HOME or
~/.config on Linux, %APPDATA% on Windows, ~/Library/Application Support on macOS). An entry
that already exists and is not in the manifest belongs to the user and is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.errors import BoneAppsError, OutputExistsError
from bone_apps.core.io.outputs import WRITTEN_BY, is_written_by_us, make_dirs, remove, write_atomic


class ShortcutError(BoneAppsError):
    """Shortcuts cannot be made here (no pyshortcuts, an app's launcher missing)."""


@dataclass(frozen=True)
class App:
    """One app that gets a shortcut: its launcher (a gui-script entry point) and its names."""

    script: str
    name: str
    description: str


APPS = (
    App("bone-dlfit", "bone_apps DLFit", "Fit a segmentation model on micro-CT scan/mask pairs"),
    App("bone-dlpred", "bone_apps DLPred", "Segment a micro-CT scan with a fitted model"),
    App("bone-iou", "bone_apps IoU", "Score label stacks against a reference: IoU, Dice, morphometry"),
)


def config_dir() -> Path:
    """The user's configuration folder for bone_apps (it may not exist yet)."""
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "bone_apps"


def manifest_path() -> Path:
    """Where the list of shortcuts bone_apps created is kept."""
    return config_dir() / "shortcuts.json"


def recorded() -> list[Path]:
    """The shortcuts bone_apps created and has not removed yet."""
    try:
        data = json.loads(manifest_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or not is_written_by_us(data.get("written_by")):
        return []
    return [Path(p) for p in data.get("shortcuts", ()) if isinstance(p, str)]


def _record(paths: list[Path]) -> None:
    make_dirs(config_dir())
    data = {"written_by": WRITTEN_BY, "shortcuts": sorted({str(p) for p in paths})}
    write_atomic(manifest_path(), json.dumps(data, indent=2) + "\n")


def launcher(script: str) -> Path:
    """The installed launcher of an app: next to this Python (a venv, a bundle) or on PATH.

    Raises:
        ShortcutError: the launcher is not installed, or its path holds a space (pyshortcuts
            splits the command at the first space).
    """
    suffix = ".exe" if sys.platform.startswith("win") else ""
    found = Path(sys.executable).parent / f"{script}{suffix}"
    if not found.is_file():
        on_path = shutil.which(script)
        if on_path is None:
            raise ShortcutError(f"{script} is not installed next to {sys.executable} nor on PATH: "
                                "reinstall bone_apps (pip install) and run this again.")
        found = Path(on_path)
    found = found.resolve()
    if " " in str(found):
        raise ShortcutError(f"{found} holds a space, which desktop shortcuts cannot launch: "
                            "install bone_apps in a folder whose path has no spaces.")
    return found


def _pyshortcuts():
    try:
        import pyshortcuts
    except ImportError:
        raise ShortcutError("Making shortcuts needs the pyshortcuts package: pip install "
                            "pyshortcuts, then run this again.") from None
    return pyshortcuts


def planned(desktop: bool = True, menu: bool = True) -> list[tuple[App, Path, list[Path]]]:
    """(app, launcher, shortcut paths) for every app, where the shortcuts will be made."""
    pyshortcuts = _pyshortcuts()
    from pyshortcuts.shortcut import shortcut

    folders = pyshortcuts.get_folders()
    plan = []
    for app in APPS:
        script = launcher(app.script)
        scut = shortcut(str(script), folders, name=app.name, description=app.description)
        places = [folder for wanted, folder in ((desktop, scut.desktop_dir), (menu, scut.startmenu_dir))
                  if wanted and folder]
        plan.append((app, script, [Path(folder) / scut.target for folder in places]))
    return plan


def create(desktop: bool = True, menu: bool = True) -> list[Path]:
    """Make the desktop and/or start-menu shortcuts of DLFit, DLPred and IoU; returns them.

    Shortcuts bone_apps made before are replaced; nothing else is.

    Raises:
        OutputExistsError: a shortcut of that name exists that bone_apps did not create.
        ShortcutError: pyshortcuts or an app's launcher is missing.
    """
    plan = planned(desktop, menu)
    ours = {str(p) for p in recorded()}
    for _, _, paths in plan:
        for path in paths:
            if os.path.lexists(path) and str(path) not in ours:
                raise OutputExistsError(f"{path} already exists and bone_apps did not create it, so "
                                        "it is not replaced: move it away and run this again.")
    make_shortcut = _pyshortcuts().make_shortcut
    made: list[Path] = []
    try:
        for app, script, paths in plan:
            if not paths:
                continue
            # The launcher itself is the executable (not this Python running it).
            make_shortcut(str(script), name=app.name, description=app.description,
                          terminal=False, desktop=desktop, startmenu=menu, executable=str(script))
            made += [path for path in paths if os.path.lexists(path)]
    finally:
        _record([*recorded(), *made])
    return made


def remove_all() -> list[Path]:
    """Remove the shortcuts bone_apps created (and only those); returns what was removed."""
    removed = [path for path in recorded() if os.path.lexists(path)]
    for path in removed:
        remove(path)
    if manifest_path().exists():
        _record([])
    return removed
