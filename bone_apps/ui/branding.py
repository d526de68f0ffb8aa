"""Each program's name and icon: the SVGs drawn by hand in ui/icons/, rendered with Qt.

The icons are rendered with QSvgRenderer into pixmaps (rather than handed to QIcon as files),
so a window's icon needs only the QtSvg module, not Qt's svg icon-engine plugin.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon, QImage, QPainter, QPixmap

ICONS = Path(__file__).resolve().with_name("icons")
# program -> name shown to the user; the icon is ICONS/<program>.svg
PROGRAMS = {"bone": "bone", "dlfit": "DLFit", "dlpred": "DLPred", "iou": "IoU", "bone_apps": "bone_apps"}
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256)


def icon_path(program: str) -> Path:
    """The SVG of `program` (one of PROGRAMS)."""
    if program not in PROGRAMS:
        raise KeyError(f"no icon for {program!r}: choose one of {', '.join(PROGRAMS)}")
    return ICONS / f"{program}.svg"


def render_icon(program: str, size: int) -> QImage:
    """The icon of `program` as a size x size image with a transparent background."""
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(icon_path(program)))
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def app_icon(program: str) -> QIcon:
    """The window icon of `program`, at the sizes title bars, task bars and docks ask for."""
    icon = QIcon()
    for size in ICON_SIZES:
        icon.addPixmap(QPixmap.fromImage(render_icon(program, size)))
    return icon
