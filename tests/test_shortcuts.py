"""`bone shortcuts` on Linux with HOME and XDG folders in tmp_path, and the bundle spec."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from bone_apps.cli import shortcuts as cli
from bone_apps.core.desktop import shortcuts

ROOT = Path(__file__).resolve().parents[1]
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux .desktop entries")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("pyshortcuts")
    home = (tmp_path / "home").resolve()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    return home


def bone_shortcuts(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bone")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["shortcuts", *argv])
    return args.func(args)


def entries(home: Path) -> list[Path]:
    return sorted((home / "Desktop").glob("*.desktop")) + sorted(
        (home / ".local" / "share" / "applications").glob("*.desktop"))


@linux
def test_create_and_remove_exactly_ours(home: Path, capsys: pytest.CaptureFixture) -> None:
    users = home / ".local" / "share" / "applications" / "someone_else.desktop"
    users.parent.mkdir(parents=True)
    users.write_text("[Desktop Entry]\nName=Mine\n")

    assert bone_shortcuts() == 0
    made = entries(home)
    names = {p.name for p in made}
    assert names == {"bone_apps_DLFit.desktop", "bone_apps_DLPred.desktop", "bone_apps_IoU.desktop",
                     "someone_else.desktop"}
    assert len(made) == 7  # three on the desktop, three in the menu, the user's own
    text = (home / "Desktop" / "bone_apps_DLFit.desktop").read_text()
    assert "Terminal=false" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    assert exec_line == f"Exec={shortcuts.launcher('bone-dlfit')}"  # the launcher, not python + it
    manifest = json.loads((home / "config" / "bone_apps" / "shortcuts.json").read_text())
    assert len(manifest["shortcuts"]) == 6
    assert "created" in capsys.readouterr().out

    assert bone_shortcuts() == 0  # again: our own entries are replaced, nothing is refused
    assert bone_shortcuts("--remove") == 0
    assert entries(home) == [users]
    assert users.read_text() == "[Desktop Entry]\nName=Mine\n"
    assert bone_shortcuts("--remove") == 0
    assert "nothing to remove" in capsys.readouterr().out


@linux
def test_desktop_or_menu_only(home: Path) -> None:
    assert bone_shortcuts("--no-desktop") == 0
    assert not (home / "Desktop").exists()
    assert len(list((home / ".local" / "share" / "applications").glob("*.desktop"))) == 3
    assert bone_shortcuts("--no-desktop", "--no-menu") == 2


@linux
def test_users_entry_of_the_same_name_is_never_replaced(home: Path) -> None:
    mine = home / "Desktop" / "bone_apps_DLPred.desktop"
    mine.parent.mkdir()
    mine.write_text("mine")
    with pytest.raises(shortcuts.OutputExistsError, match="bone_apps did not create it"):
        bone_shortcuts()
    assert mine.read_text() == "mine"
    assert entries(home) == [mine]  # refused before anything was made
    assert bone_shortcuts("--no-desktop") == 0  # the menu alone does not touch it
    assert bone_shortcuts("--remove") == 0
    assert entries(home) == [mine]


def test_missing_launcher_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nowhere/python")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(shortcuts.ShortcutError, match="reinstall bone_apps"):
        shortcuts.launcher("bone-dlfit")


# ----------------------------------------------------------------------------------------------
# The bundle spec


def test_spec_compiles_and_names_every_entry_point() -> None:
    spec = (ROOT / "packaging" / "bone_apps.spec").read_text(encoding="utf-8")
    compile(spec, "bone_apps.spec", "exec")
    entry_points = {}  # [project.scripts] and [project.gui-scripts] (no tomllib on Python 3.10)
    section = ""
    for line in (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section in ("[project.scripts]", "[project.gui-scripts]") and "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            entry_points[name] = re.sub(r'^"|"$', "", target)
    assert len(entry_points) == 4
    for name, target in entry_points.items():
        module = target.split(":")[0]
        assert f'"{name}"' in spec, name
        assert module in spec or module.replace(".", "/") in spec, module
