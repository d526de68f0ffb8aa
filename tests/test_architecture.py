"""Rules of the package's shape: core never loads Qt; light commands never load torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import bone_apps.core


def _modules_loaded_by(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_importing_every_core_module_loads_no_qt():
    names = [f"bone_apps.core.{m.name}" for m in pkgutil.iter_modules(bone_apps.core.__path__)]
    assert "bone_apps.core.volume" in names
    loaded = _modules_loaded_by("; ".join(f"import {name}" for name in names))
    assert not loaded & {"PySide6", "PyQt5", "PyQt6", "shiboken6"}


def test_scan_io_sample_scans_and_cpu_scoring_do_not_load_torch():
    loaded = _modules_loaded_by(
        "import bone_apps.core.volume, bone_apps.core.synthetic, bone_apps.core.scoring")
    assert "torch" not in loaded
