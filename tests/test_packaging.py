"""The bundle's recipe without building it: the spec names what exists, the bundle leaves out
nothing the programs import, packaging/smoke.py runs its steps, and the apps log start errors."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bone_apps.core.desktop import startlog

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "bone_apps.spec"
SMOKE = ROOT / "packaging" / "smoke.py"
linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="DISPLAY is how Linux finds a desktop")


def spec_constant(name: str):
    """A literal assigned at the top of the spec (ENTRY_POINTS, EXCLUDES, ...)."""
    for node in ast.parse(SPEC.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned in {SPEC}")


def test_entry_points_and_hidden_imports_name_modules_that_exist() -> None:
    for name, (module, function, console) in spec_constant("ENTRY_POINTS").items():
        assert callable(getattr(importlib.import_module(module), function)), name
        assert console is (name == "bone")
    import bone_apps

    for skipped in spec_constant("SKIP_SUBMODULES"):
        assert importlib.util.find_spec(skipped) is not None, skipped
    # collect_submodules("bone_apps") must reach every CLI subcommand the parser loads by name.
    from bone_apps.cli import COMMANDS

    package = Path(bone_apps.__file__).parent
    for command in COMMANDS:
        module = f"bone_apps.cli.{command}"
        assert importlib.util.find_spec(module) is not None, module
        assert (package / "cli" / f"{command}.py").is_file()


def test_data_files_and_torchvision_libraries_exist() -> None:
    hooks = pytest.importorskip("PyInstaller.utils.hooks")
    for package in spec_constant("DATA_PACKAGES"):
        assert importlib.util.find_spec(package) is not None, package
        for source, _dest in hooks.collect_data_files(package):
            assert Path(source).is_file(), source
    torchvision = Path(importlib.util.find_spec("torchvision").origin).parent
    names = {path.name.split(".")[0] for path in torchvision.iterdir()
             if path.suffix in (".so", ".pyd", ".dylib")}
    assert names & {"_C", "_C_stable"}, f"no torchvision ops library among {sorted(names)}"
    assert names <= set(spec_constant("TORCHVISION_LIBRARIES")) | {"_C", "image"}, names


def test_the_bundle_leaves_out_nothing_the_programs_import() -> None:
    """What the spec calls never imported stays unloaded when the CLI, every subcommand, the
    windows and the libraries the commands load at run time (torch, torchvision, smp, monai,
    torchmetrics) are imported; the excludes hold them all."""
    never = spec_constant("NEVER_IMPORTED")
    assert set(never) | set(spec_constant("OPTIONAL")) <= set(excludes_of_spec())
    code = (
        "import json, sys, importlib\n"
        "import bone_apps.cli, bone_apps.dlfit.__main__, bone_apps.dlpred.__main__, bone_apps.iou.__main__\n"
        "from bone_apps.cli import COMMANDS, build_parser\n"
        "for c in COMMANDS: importlib.import_module('bone_apps.cli.' + c)\n"
        "build_parser()\n"
        "import bone_apps.dlfit.window, bone_apps.dlpred.window, bone_apps.iou.window\n"
        "import torch, torchvision, segmentation_models_pytorch, monai, torchmetrics\n"
        "import bone_apps.core.fit.loop, bone_apps.core.predict.segment, bone_apps.core.score.scoring\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    hits = [name for name in loaded for excluded in never
            if name == excluded or name.startswith(excluded + ".")]
    assert not hits, f"the spec says these are never imported, yet they are: {hits}"


def excludes_of_spec() -> list[str]:
    """EXCLUDES as the spec computes it (NEVER_IMPORTED + OPTIONAL + Qt modules)."""
    for node in ast.parse(SPEC.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXCLUDES" for t in node.targets):
            namespace = {"NEVER_IMPORTED": spec_constant("NEVER_IMPORTED"),
                         "OPTIONAL": spec_constant("OPTIONAL")}
            return eval(compile(ast.Expression(node.value), str(SPEC), "eval"), {}, namespace)
    raise AssertionError("EXCLUDES is not assigned in the spec")


def test_smoke_script_runs_its_steps_on_the_installed_launchers() -> None:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / ("bone.exe" if os.name == "nt" else "bone")).exists():
        pytest.skip("no bone launcher next to this Python")
    result = subprocess.run(
        [sys.executable, str(SMOKE), "--installed", "--steps", "version,synth,windows",
         "--window-seconds", "1", "--timeout", "60"],
        capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in lines] == ["ok"] * 5 + ["passed:"], lines
    assert "bone-iou (offscreen, 1 s)" in result.stdout
    assert lines[-1].startswith("passed: 5 checks")


def test_smoke_script_fails_without_a_bundle(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SMOKE), str(tmp_path / "no bundle")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  no bundle")


@linux
def test_a_window_without_a_display_names_its_start_log(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    result = subprocess.run([sys.executable, "-m", "bone_apps.iou"], capture_output=True, text=True,
                            env=env, timeout=60)
    log = tmp_path / "config" / "bone_apps" / "logs" / "iou-start.log"
    assert result.returncode == 1
    assert "IoU could not start: there is no display" in result.stderr
    assert str(log) in result.stderr
    text = log.read_text(encoding="utf-8")
    assert text.startswith(startlog.HEADER)
    assert "problem: there is no display" in text


def test_start_log_falls_back_to_the_temp_folder(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "not a folder"
    blocked.write_text("a file where the config folder would be")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocked))
    monkeypatch.setenv("APPDATA", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    try:
        raise OSError(13, "Permission denied", "/home/someone/.config")
    except OSError as exc:
        message, path = startlog.record_start_error("dlfit", exc)
    if sys.platform == "darwin":
        pytest.skip("the config folder of macOS is under HOME, not XDG_CONFIG_HOME")
    assert path == tmp_path / "tmp" / "bone_apps-dlfit-start.log"
    assert message == ("DLFit could not start: PermissionError: [Errno 13] Permission denied: "
                       f"'/home/someone/.config'. Details are in {path}.")
    assert "Traceback" in path.read_text(encoding="utf-8")
    # A file of that name that bone_apps did not write is left alone.
    path.write_text("someone else's notes\n")
    assert startlog.write_start_log("dlfit", "again") is None
    assert path.read_text() == "someone else's notes\n"


# -- icons, names and the macOS app -------------------------------------------------------------


def test_every_program_has_an_icon_that_renders(qapp) -> None:
    """Each program of the spec has its own SVG, and Qt (offscreen) draws it: not empty, and
    unlike the others."""
    from bone_apps.ui.branding import PROGRAMS, app_icon, icon_path, render_icon

    icons = spec_constant("ICONS")
    assert set(spec_constant("ENTRY_POINTS")) | {spec_constant("MAC_CHOOSER")[0]} == set(icons)
    assert set(icons.values()) == set(PROGRAMS)
    drawn = {}
    for program in PROGRAMS:
        assert icon_path(program).is_file(), program
        image = render_icon(program, 64)
        assert not image.isNull() and image.width() == 64
        opaque = sum(image.pixelColor(x, y).alpha() > 0 for x in range(0, 64, 4) for y in range(0, 64, 4))
        assert opaque > 100, f"{program}'s icon is (almost) empty"
        drawn[program] = bytes(image.constBits())
        assert not app_icon(program).isNull()
    assert len(set(drawn.values())) == len(drawn), "two programs share an icon"
    # No generated icon files are kept in the checkout: the build makes them.
    folder = icon_path("bone").parent
    assert sorted(p.suffix for p in folder.iterdir()) == [".svg"] * len(PROGRAMS)


@pytest.mark.parametrize("kind", ["png", "ico", "icns"])
def test_the_build_renders_icon_files(tmp_path: Path, kind: str) -> None:
    """packaging/icons.py (what the spec calls) writes the icon file each platform's EXE takes."""
    pytest.importorskip("PySide6")
    result = subprocess.run([sys.executable, str(ROOT / "packaging" / "icons.py"), str(tmp_path),
                             "--format", kind], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert result.returncode == 0, result.stderr
    from bone_apps.ui.branding import PROGRAMS

    for program in PROGRAMS:
        path = tmp_path / f"{program}.{kind}"
        assert path.is_file() and path.stat().st_size > 1000, path
    if kind == "png":
        from PySide6.QtGui import QImage

        assert QImage(str(tmp_path / "iou.png")).width() == 256


def test_the_bundle_keeps_what_the_icons_need() -> None:
    """The windows render their SVG icons with QtSvg: the spec names it and never excludes it,
    and the SVGs are data files of bone_apps (collected with DATA_PACKAGES)."""
    assert "PySide6.QtSvg" in spec_constant("QT_HIDDEN")
    assert not any(name.startswith("PySide6.QtSvg") for name in excludes_of_spec())
    assert "bone_apps" in spec_constant("DATA_PACKAGES")
    module, function = spec_constant("MAC_CHOOSER")[1:]
    assert callable(getattr(importlib.import_module(module), function))
    assert spec_constant("MAC_BUNDLE").endswith(".app")


def test_each_window_names_its_app_and_has_its_icon(qtbot) -> None:
    from bone_apps.dlfit.window import DLFitWindow
    from bone_apps.dlpred.window import DLPredWindow
    from bone_apps.iou.window import IoUWindow

    for cls, name in ((DLFitWindow, "DLFit"), (DLPredWindow, "DLPred"), (IoUWindow, "IoU")):
        window = cls()
        qtbot.addWidget(window)
        assert window.windowTitle().startswith(f"bone_apps {name} — ")
        assert not window.windowIcon().isNull()
        window.close()


def test_the_macos_chooser_opens_each_app(qtbot) -> None:
    from bone_apps import __version__
    from bone_apps.ui.chooser import AppChooser

    chooser = AppChooser()
    qtbot.addWidget(chooser)
    chooser.show()
    assert chooser.windowTitle() == f"bone_apps {__version__}"
    for program, name in (("iou", "IoU"), ("dlpred", "DLPred")):
        chooser.buttons[program].click()
        window = chooser.windows[program]
        qtbot.addWidget(window)
        assert window.isVisible() and f"bone_apps {name}" in window.windowTitle()
        assert chooser.open(program) is window  # open again: the same window, raised
        window.close()
    chooser.close()


def test_the_windows_build_script_offers_what_build_sh_does() -> None:
    """build.ps1 takes the same torch sources, builds from its own venv, checks the version and
    zips; the workflow builds Windows with it."""
    ps1 = (ROOT / "packaging" / "build.ps1").read_text(encoding="utf-8")
    sh = (ROOT / "packaging" / "build.sh").read_text(encoding="utf-8")
    for text in ("https://download.pytorch.org/whl/cpu", "build\\bundle-venv", "--no-deps --force-reinstall",
                 "bone_apps.spec", "bone.exe\") --version", "-m zipfile -c", "BUILD.txt"):
        assert text in ps1, text
    for option in ("Torch", "Python", "Fresh", "NoArchive"):
        assert f"${option}" in ps1
        assert f"--{option.lower().replace('noarchive', 'no-archive')}" in sh
    workflow = (ROOT / ".github" / "workflows" / "bundles.yml").read_text(encoding="utf-8")
    assert "packaging/build.ps1" in workflow and "packaging/build.sh" in workflow
