"""Rules of the package's shape: core never loads Qt; light commands never load torch."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import bone_apps.core


def _modules_loaded_by(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
                          capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_importing_every_core_module_loads_no_qt():
    names = [m.name for m in pkgutil.walk_packages(bone_apps.core.__path__, "bone_apps.core.")]
    assert {"bone_apps.core.io.volume", "bone_apps.core.io.formats.zarr", "bone_apps.core.evaluate.cv",
            "bone_apps.core.export.onnx", "bone_apps.core.measure.thickness"} <= set(names)
    loaded = _modules_loaded_by("; ".join(f"import {name}" for name in names))
    assert not loaded & {"PySide6", "PyQt5", "PyQt6", "shiboken6"}


def test_scan_io_sample_scans_and_cpu_scoring_do_not_load_torch():
    loaded = _modules_loaded_by(
        "import bone_apps.core.io.volume, bone_apps.core.data.synthetic, bone_apps.core.score.scoring")
    assert "torch" not in loaded


def test_the_napari_plugin_reaches_qt_only_through_napari():
    """napari may run on PyQt: the plugin imports neither PySide6 nor the apps' own Qt code."""
    folder = Path(bone_apps.core.__path__[0]).parent / "napari_plugin"
    files = sorted(folder.glob("*.py"))
    assert files
    forbidden = ("PySide6", "shiboken6", "bone_apps.ui", "bone_apps.dlfit", "bone_apps.dlpred",
                 "bone_apps.iou")
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(forbidden), f"{file.name} imports {name}"
