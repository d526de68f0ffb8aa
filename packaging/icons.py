"""Render the programs' SVG icons (bone_apps/ui/icons) into the files executables carry:
.ico on Windows, .icns on macOS, .png elsewhere. Called by bone_apps.spec at build time; the
generated files live in the build folder, never in the checkout.

    python packaging/icons.py OUT_FOLDER [--format ico|icns|png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (16, 32, 64, 128, 256, 512)


def icon_format(platform: str | None = None) -> str:
    """The icon file an executable of `platform` (default: this one) takes."""
    platform = platform or sys.platform
    return "ico" if platform.startswith("win") else "icns" if platform == "darwin" else "png"


def _qt_app():
    """A QGuiApplication for painting (offscreen: a build machine may have no display)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    return QGuiApplication.instance() or QGuiApplication([])


def _pil_image(image):
    """A QImage as a Pillow RGBA image."""
    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    import io

    return Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGBA")


def write_icon(program: str, out: Path, kind: str | None = None) -> Path:
    """Write the icon of `program` (bone_apps.ui.branding.PROGRAMS) into folder `out` as
    <program>.<kind>; Pillow writes the several sizes of .ico/.icns when it is installed,
    Qt's image plugins write one size otherwise."""
    kind = kind or icon_format()
    app = _qt_app()  # noqa: F841 - painting needs the application object alive
    from bone_apps.ui.branding import icon_path, render_icon

    if not icon_path(program).is_file():
        raise FileNotFoundError(f"{icon_path(program)} is missing: bone_apps was installed without its "
                                "icons (package data bone_apps/ui/icons/*.svg in pyproject.toml)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{program}.{kind}"
    largest = 512 if kind == "icns" else 256
    image = render_icon(program, largest)
    try:
        import PIL  # noqa: F401
    except ImportError:
        PIL = None  # noqa: N806
    if kind == "png" or PIL is None:
        if not image.save(str(path), kind.upper()):
            raise OSError(f"Qt could not write {path}: its {kind} image plugin is missing")
    elif kind == "ico":
        _pil_image(image).save(path, format="ICO", sizes=[(s, s) for s in SIZES])
    else:
        _pil_image(image).save(path, format="ICNS", sizes=[(s, s) for s in ICNS_SIZES])
    return path


def main(argv: list[str] | None = None) -> int:
    from bone_apps.ui.branding import PROGRAMS

    parser = argparse.ArgumentParser(description="Render the programs' icons for a bundle.")
    parser.add_argument("out", type=Path, help="folder for the icon files")
    parser.add_argument("--format", choices=("ico", "icns", "png"), default=icon_format())
    args = parser.parse_args(argv)
    for program in PROGRAMS:
        print(write_icon(program, args.out, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
