"""A slice viewer: one z slice of a scan in grey with its labels overlaid in class colours.

Reusable by any window that shows a scan and a label stack (DLPred's preview, a future mask
check in DLFit or IoU). Slices are read on demand from a lazy `Volume`; labels come from a
callable `z -> (Y, X) array or None`, so the caller decides where they live (a stack on disk,
slices arriving from a running job, nothing yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QKeySequence, QPainter, QPalette, QShortcut, QWheelEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.io.volume import Volume
from bone_apps.ui.contrast import ContrastBar, percentile_range

# Label 0 (background) is never tinted; then green bone and blue pores as in the paper's figures.
CLASS_COLOURS = ("#000000", "#2ca02c", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#bcbd22", "#17becf")
ZOOMS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# While following a running job, draw at most this often: reading and drawing a 4000 px slice
# for every slice written would keep the GUI thread busy on a fast GPU.
FOLLOW_INTERVAL_MS = 200
LabelSource = Callable[[int], "np.ndarray | None"]


def class_colour(label: int) -> QColor:
    """The overlay colour of `label` (labels past the palette reuse it, skipping background)."""
    if label <= 0:
        return QColor(CLASS_COLOURS[0])
    return QColor(CLASS_COLOURS[1 + (label - 1) % (len(CLASS_COLOURS) - 1)])


def _colour_table(size: int, colours: Sequence[str] | None = None) -> np.ndarray:
    table = np.zeros((size, 3), np.uint16)
    for label in range(1, size):
        c = QColor(colours[label]) if colours and label < len(colours) else class_colour(label)
        table[label] = (c.red(), c.green(), c.blue())
    return table


def composite(grey: np.ndarray, labels: np.ndarray | None, opacity: float,
              colours: Sequence[str] | None = None) -> np.ndarray:
    """Blend class colours over an 8-bit grey image.

    Args:
        grey: (Y, X) uint8.
        labels: (Y, X) integer labels or None; label 0 stays untinted.
        opacity: 0 (labels invisible) to 1 (labels opaque).
        colours: colour names by label replacing the class colours (labels past it keep theirs).

    Returns:
        (Y, X, 3) uint8 RGB.
    """
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is None or opacity <= 0:
        return rgb
    alpha = int(round(opacity * 256))
    mask = labels > 0
    if not mask.any():
        return rgb
    lab = labels[mask].astype(np.int64)
    table = _colour_table(int(lab.max()) + 1, colours)
    blended = (rgb[mask].astype(np.uint16) * (256 - alpha) + table[lab] * alpha) >> 8
    rgb[mask] = blended.astype(np.uint8)
    return rgb


class _Canvas(QWidget):
    """Paints one RGB image at a zoom factor, or scaled to fit when zoom is None."""

    zoom_step = Signal(int)  # +1 / -1 from Ctrl + mouse wheel

    def __init__(self) -> None:
        super().__init__()
        self.image = QImage()
        self.zoom: float | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_image(self, image: QImage, full_size: QSize, zoom: float | None) -> None:
        self.image, self.full_size, self.zoom = image, full_size, zoom
        if zoom is not None:
            self.setFixedSize(max(1, round(full_size.width() * zoom)),
                              max(1, round(full_size.height() * zoom)))
        else:
            self.setMinimumSize(1, 1)
            self.setMaximumSize(16777215, 16777215)
        self.update()

    def target(self) -> QRectF:
        """Where the image is drawn, in widget coordinates."""
        if self.image.isNull():
            return QRectF()
        w, h = self.full_size.width(), self.full_size.height()
        if self.zoom is not None:
            return QRectF(0, 0, w * self.zoom, h * self.zoom)
        scale = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * scale) / 2, (self.height() - h * scale) / 2,
                      w * scale, h * scale)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().dark())
        if self.image.isNull():
            return
        target = self.target()
        # Magnified pixels stay crisp squares; reduced ones are smoothed.
        smooth = target.width() < self.image.width()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        painter.drawImage(target, self.image)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom_step.emit(1 if event.angleDelta().y() > 0 else -1)
            event.accept()
        else:
            event.ignore()  # the scroll area pans


class SliceView(QWidget):
    """A scan slice with a label overlay, a z slider, an opacity slider, zoom and a legend.

    `set_scan(volume)` shows a lazily read (Z, Y, X) scan; `set_labels(source)` gives the
    labels of slice z, or None where there are none yet; `slice_ready(z)` tells the view that
    labels for z have arrived (it jumps there while "Follow" is ticked). `z_changed(int)`
    fires when the shown slice changes.
    """

    z_changed = Signal(int)

    def __init__(self, show_follow: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.volume: Volume | None = None
        self._labels: LabelSource | None = None
        self._contrast = (0.0, 1.0)
        self._colours: tuple[str, ...] | None = None
        self.labels_shown = False  # whether the current picture has labels in it
        self._build(show_follow)

    def _build(self, show_follow: bool) -> None:
        self.canvas = _Canvas()
        self.canvas.setToolTip("The scan with the predicted labels on top. Ctrl + mouse wheel "
                               "or Ctrl +/- zooms; drag the scroll bars to move around.")
        self.canvas.zoom_step.connect(self._step_zoom)
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.canvas)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.scroll.setMinimumSize(200, 200)
        self.scroll.setBackgroundRole(QPalette.ColorRole.Dark)

        self.z_slider = QSlider(Qt.Orientation.Horizontal)
        self.z_slider.setToolTip("Which slice along z to show (arrow keys, Page Up/Down).")
        self.z_spin = QSpinBox()
        self.z_spin.setToolTip(self.z_slider.toolTip())
        self.z_slider.valueChanged.connect(self.z_spin.setValue)
        self.z_spin.valueChanged.connect(self.z_slider.setValue)
        self.z_slider.valueChanged.connect(self._on_z)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(50)
        self.opacity.setToolTip("How strongly the label colours cover the scan: 0 shows the scan "
                                "alone, 100 the labels alone.")
        self.opacity.valueChanged.connect(lambda _: self._render())
        self.zoom = QComboBox()
        self.zoom.addItem("Fit", None)
        for factor in ZOOMS:
            self.zoom.addItem(f"{factor:.0%}", factor)
        self.zoom.setToolTip("Magnification: Fit shows the whole slice; 100 % is one screen pixel "
                             "per voxel. Ctrl + mouse wheel and Ctrl +/- change it too.")
        self.zoom.currentIndexChanged.connect(lambda _: self._render())
        self.follow = QCheckBox("&Follow new slices")
        self.follow.setChecked(True)
        self.follow.setToolTip("While predicting, jump to each slice as soon as it is written. "
                               "Untick to stay on the slice you chose.")
        self.follow.setVisible(show_follow)
        # Moving the slider by hand means "let me look here": stop jumping to new slices.
        self.z_slider.actionTriggered.connect(lambda _: self.follow.setChecked(False))
        self._pending_z: int | None = None
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(FOLLOW_INTERVAL_MS)
        self._follow_timer.timeout.connect(self._follow_pending)
        # Micro-CT grey levels vary widely between scanners and scans: black and white are the user's.
        self.contrast = ContrastBar()
        self.contrast.changed.connect(self._set_contrast)
        self.contrast.auto_requested.connect(self.auto_contrast)
        self.info = QLabel("No scan")
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)

        z_label, opacity_label, zoom_label = QLabel("&Go to slice:"), QLabel("Overla&y:"), QLabel("Zoo&m:")
        z_label.setBuddy(self.z_slider)
        opacity_label.setBuddy(self.opacity)
        zoom_label.setBuddy(self.zoom)
        controls = QGridLayout()
        controls.addWidget(z_label, 0, 0)
        controls.addWidget(self.z_slider, 0, 1)
        controls.addWidget(self.z_spin, 0, 2)
        controls.addWidget(self.follow, 0, 3)
        controls.addWidget(opacity_label, 1, 0)
        controls.addWidget(self.opacity, 1, 1)
        zoom_row = QHBoxLayout()
        zoom_row.addWidget(zoom_label)
        zoom_row.addWidget(self.zoom)
        controls.addLayout(zoom_row, 1, 2, 1, 2)
        contrast_label = QLabel("Co&ntrast:")
        contrast_label.setBuddy(self.contrast.low)
        controls.addWidget(contrast_label, 2, 0)
        controls.addWidget(self.contrast, 2, 1, 1, 3)
        controls.setColumnStretch(1, 1)
        footer = QHBoxLayout()
        footer.addWidget(self.info, 1)
        footer.addWidget(self.legend)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(controls)
        layout.addLayout(footer)

        for keys, step in (("Ctrl++", 1), ("Ctrl+=", 1), ("Ctrl+-", -1)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda s=step: self._step_zoom(s))
        fit = QShortcut(QKeySequence("Ctrl+0"), self)
        fit.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        fit.activated.connect(lambda: self.zoom.setCurrentIndex(0))
        self.set_scan(None)

    # -- public ---------------------------------------------------------------------------------
    def set_scan(self, volume: Volume | None) -> None:
        """Show `volume` (None clears the view); keeps the current z where it still exists."""
        self.volume = volume
        depth = volume.shape[0] if volume is not None else 1
        for widget in (self.z_slider, self.z_spin):
            widget.blockSignals(True)
            widget.setRange(0, depth - 1)
            widget.blockSignals(False)
        self.z_spin.setValue(self.z_slider.value())
        for widget in (self.z_slider, self.z_spin, self.opacity, self.zoom, self.contrast):
            widget.setEnabled(volume is not None)
        if volume is not None:
            self._show_contrast(*self._estimate_contrast(volume))
        self._render()

    def auto_contrast(self) -> None:
        """Black and white from the percentiles of the shown slice."""
        if self.volume is not None:
            self._show_contrast(*percentile_range(self.volume.read_slice(self.z())))
            self._render()

    def _show_contrast(self, lo: float, hi: float) -> None:
        integer = self.volume is not None and np.issubdtype(np.dtype(self.volume.dtype), np.integer)
        self.contrast.set_range(lo, hi, integer)
        self._contrast = self.contrast.values()

    def _set_contrast(self, lo: float, hi: float) -> None:
        self._contrast = (lo, hi)
        self._render()

    def set_labels(self, source: LabelSource | None) -> None:
        """Where labels come from: `source(z)` returns (Y, X) labels or None."""
        self._labels = source
        self._render()

    def set_class_names(self, names: Sequence[str], colours: Sequence[str] | None = None,
                        numbered: bool = True) -> None:
        """Show a legend of the class colours (label 0 is left out: it is not tinted).

        `colours` (colour names by label) replaces the class colours in the overlay and legend;
        `numbered` puts each label's value before its name.
        """
        colours = tuple(colours) if colours else None
        repaint, self._colours = colours != self._colours, colours
        items = []
        for label, name in enumerate(names):
            if label == 0:
                continue
            colour = self.label_colour(label).name()
            text = f"{label}: {name}" if numbered else name
            items.append(f"<span style='color:{colour}'>&#9632;</span>&nbsp;{text}")
        self.legend.setText("&nbsp;&nbsp;".join(items))
        if repaint:
            self._render()

    def label_colour(self, label: int) -> QColor:
        """The overlay colour of `label` in this view."""
        if self._colours and 0 < label < len(self._colours):
            return QColor(self._colours[label])
        return class_colour(label)

    def z(self) -> int:
        return self.z_slider.value()

    def set_z(self, z: int) -> None:
        self.z_slider.setValue(z)

    def slice_ready(self, z: int) -> None:
        """Labels for slice z have arrived: show them if following or if z is on screen.

        Drawing is throttled to one slice per FOLLOW_INTERVAL_MS; the newest one wins.
        """
        following = self.follow.isVisible() and self.follow.isChecked()
        if not following and z != self.z():
            return
        if self._follow_timer.isActive():
            self._pending_z = z
            return
        self._show_ready(z)
        self._follow_timer.start()

    def flush(self) -> None:
        """Show at once a slice still held back by the throttle (the job has ended)."""
        self._follow_timer.stop()
        self._follow_pending()
        self._follow_timer.stop()

    def _follow_pending(self) -> None:
        if self._pending_z is not None:
            z, self._pending_z = self._pending_z, None
            self._show_ready(z)
            self._follow_timer.start()

    def _show_ready(self, z: int) -> None:
        if self.follow.isVisible() and self.follow.isChecked() and z != self.z():
            self.set_z(z)
        elif z == self.z():
            self._render()

    def refresh(self) -> None:
        """Read and draw the current slice again."""
        self._render()

    # -- drawing --------------------------------------------------------------------------------
    def _on_z(self, z: int) -> None:
        self._render()
        self.z_changed.emit(z)

    def _step_zoom(self, step: int) -> None:
        if self.zoom.currentIndex() == 0:  # from Fit, step to the nearest fixed zoom
            current = self.canvas.target().width() / max(1, self.canvas.full_size.width()) \
                if not self.canvas.image.isNull() else 1.0
            index = min(range(len(ZOOMS)), key=lambda i: abs(ZOOMS[i] - current)) + 1
        else:
            index = self.zoom.currentIndex()
        self.zoom.setCurrentIndex(max(1, min(self.zoom.count() - 1, index + step)))

    @staticmethod
    def _estimate_contrast(volume: Volume) -> tuple[float, float]:
        """Grey levels to map to black and white: robust percentiles of a few sampled slices."""
        depth = volume.shape[0]
        step = max(1, max(volume.shape[1:]) // 512)  # a few hundred thousand voxels at most
        samples = [volume.read_slice(z)[::step, ::step].ravel()
                   for z in sorted({0, depth // 2, depth - 1})]
        values = np.concatenate(samples).astype(np.float64)
        lo, hi = np.percentile(values, (0.5, 99.5))
        return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)

    def _display_scale(self) -> float:
        factor = self.zoom.currentData()
        if factor is not None or self.volume is None:
            return factor or 1.0
        _, y, x = self.volume.shape
        viewport = self.scroll.viewport().size()
        return min(viewport.width() / x, viewport.height() / y)

    def _render(self) -> None:
        self.labels_shown = False
        if self.volume is None:
            self.info.setText("No scan chosen")
            self.canvas.set_image(QImage(), QSize(1, 1), None)
            return
        z, (depth, y, x) = self.z(), self.volume.shape
        # Big slices shown small are subsampled first: drawing stays fast on 4000 px slices.
        stride = max(1, int(1 / max(self._display_scale(), 1e-6)))
        scan = self.volume.read_slice(z)[::stride, ::stride]
        lo, hi = self._contrast
        grey = np.clip((scan.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        labels = self._labels(z) if self._labels is not None else None
        if labels is not None and labels.shape == (y, x):
            labels = labels[::stride, ::stride]
            self.labels_shown = True
        else:
            labels = None
        rgb = np.ascontiguousarray(composite(grey, labels, self.opacity.value() / 100,
                                                  self._colours))
        image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.shape[1] * 3,
                       QImage.Format.Format_RGB888).copy()
        fit = self.zoom.currentData() is None
        self.canvas.set_image(image, QSize(x, y), self.zoom.currentData())
        # Size constraints first, then the scroll area's mode: a canvas still fixed at the last
        # zoom's size would otherwise keep that size in Fit mode.
        self.scroll.setWidgetResizable(fit)
        if fit:
            self.canvas.resize(self.scroll.viewport().size())
        state = "labels shown" if self.labels_shown else (
            "no labels yet" if self._labels is not None else "scan only")
        self.info.setText(f"Slice {z} of 0–{depth - 1} ({self.volume.slice_names[z]}) · "
                          f"{x} x {y} px · {state}")

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if self.zoom.currentData() is None and self.volume is not None:
            self._render()  # the subsampling stride depends on the fitted size
