"""DLPred's prediction options (Fig. 6B and beyond), each with a plain-words tooltip.

The form only collects values; the window turns them into the engine's PredictConfig.
Values are remembered between sessions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
    QWidget,
)

from bone_apps.core.options import defaults, described
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.settings import InferenceSettings
from bone_apps.ui.settings import AppSettings

# The engine's defaults; chunk, overlap and blend are None there ("from the weights"), so the
# form starts from the paper's (§2.3.2, Table 5), which weights that say nothing get.
CORE_DEFAULTS = defaults(PredictConfig)
PAPER = InferenceSettings()
OPTIONS = described(PredictConfig)  # labels and choices, as the command line's help has them
# The Alt+letter of each option's label (its first occurrence is underlined).
_KEYS = {"device": "D", "chunk": "C", "chunk_depth": "k", "overlap": "v", "threshold": "t",
         "blend": "B", "batch": "z", "tta": "A", "probabilities": "l"}


def marked_label(name: str) -> str:
    """The field's label with its Alt+letter marked (&)."""
    text = OPTIONS[name].label
    at = text.index(_KEYS[name])
    return text[:at] + "&" + text[at:]

TIPS = {
    "device": (
        "Where the model runs. Automatic uses an NVIDIA GPU when there is one and the CPU "
        "otherwise. 'All GPUs' shares each batch among every GPU in this computer (the paper's "
        "multi-GPU mode). Choose the CPU when the GPU is busy with other work; it gives the same "
        "kind of result, only slower."),
    "chunk": (
        "The scan is cut into square chunks of this many pixels, the model segments each chunk, "
        "and the chunks are stitched back together. This does not change what the model has "
        "learned; it only decides how much goes into memory at once. "
        f"Paper default: {PAPER.chunk} px (rounded up to what the network needs, usually a "
        "multiple of 32). Lower it if the GPU runs out of memory; slices smaller than a chunk are "
        "processed whole."),
    "chunk_depth": (
        "3D models only: how many slices one chunk spans. It may differ from the chunk's width "
        "and height, and is rounded up to what the network needs (16 slices for the 3D U-Net). "
        "Default: the depth the model was fitted on. Lower it if memory runs out."),
    "overlap": (
        "How much neighbouring chunks overlap, as a fraction of a chunk (0 to 0.9). Where chunks "
        "overlap, their class probabilities are averaged, which hides seams at chunk borders. "
        f"Default {PAPER.overlap:g}. Raise it (e.g. 0.5) if you see straight lines at chunk "
        "borders; lower it to 0 for the fastest run."),
    "threshold": (
        "Confidence threshold: a voxel whose most likely class has a probability below this "
        "value becomes background (label 0). "
        f"Paper default {CORE_DEFAULTS['threshold']:g}. Raise it to keep only voxels the "
        "model is sure about; set 0 to keep the model's best guess everywhere."),
    "blend": (
        "How overlapping chunks are combined. Mean: a plain average of the probabilities, as in "
        "the paper (default). Gaussian: trusts the centre of each chunk more than its edges, which "
        "can smooth seams further when the overlap is large."),
    "batch": (
        "How many chunks go through the model at once. 0 = automatic: the most that fit in free "
        "GPU memory (or RAM on the CPU), halved and retried if memory runs out, as in the paper. "
        "Set a number only to leave memory for other programs; the labels do not depend on it."),
    "tta": (
        "Test-time augmentation: also segment mirrored copies of each chunk and average them. "
        "Slightly smoother, more robust labels for several times the run time. Off by default "
        "(the paper does not use it)."),
    "probabilities": (
        "Also save one stack per class with its probability (0-255) next to the labels, to "
        "inspect uncertain regions or to threshold them yourself later. Off by default: these "
        "stacks are as large as the scan, once per class."),
}


@dataclass(frozen=True)
class OptionValues:
    """What the form holds; `batch` 0 means automatic."""

    device: str
    chunk: int
    chunk_depth: int
    overlap: float
    threshold: float
    blend: str
    batch: int
    tta: bool
    probabilities: bool


class OptionsBox(QGroupBox):
    """The group of prediction options, remembered in `settings`."""

    def __init__(self, settings: AppSettings, devices: list[tuple[str, str]],
                 parent: QWidget | None = None) -> None:
        super().__init__("Prediction options", parent)
        self.settings = settings
        self.device = QComboBox()
        for text, value in devices:
            self.device.addItem(text, value)
        self.chunk = _spin(32, 8192, 32, " px")
        self.chunk_depth = _spin(1, 1024, 16, " slices")
        self.chunk_depth.setEnabled(False)  # until a 3D model is chosen
        self.overlap = _double(0.0, 0.9, 0.05)
        self.threshold = _double(0.0, 1.0, 0.05)
        self.blend = QComboBox()
        for value in OPTIONS["blend"].choices:
            self.blend.addItem(value.capitalize() + (" (paper)" if value == PAPER.blend else ""), value)
        self.batch = _spin(0, 4096, 1, "")
        self.batch.setSpecialValueText("Automatic")
        self.tta = QCheckBox(marked_label("tta"))
        self.probabilities = QCheckBox(marked_label("probabilities"))
        self.defaults_button = QPushButton("Paper d&efaults")
        self.defaults_button.setToolTip("Set every option back to the paper's defaults.")
        self.defaults_button.clicked.connect(self.restore_defaults)
        for name in TIPS:
            getattr(self, name).setToolTip(TIPS[name])

        form = QFormLayout(self)
        for name in ("device", "chunk", "chunk_depth", "overlap", "threshold", "blend", "batch"):
            form.addRow(marked_label(name) + ":", getattr(self, name))
        form.addRow("", self.tta)
        form.addRow("", self.probabilities)
        form.addRow("", self.defaults_button)
        for row in range(form.rowCount()):
            label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            if label is not None and label.widget() and field is not None:
                label.widget().setToolTip(field.widget().toolTip())
        self.restore_defaults()
        self._load()

    def restore_defaults(self) -> None:
        """Set every option to the engine's defaults, with the paper's chunk, overlap and blending."""
        self.device.setCurrentIndex(0)
        _select(self.device, CORE_DEFAULTS["device"])
        self.chunk.setValue(PAPER.chunk)
        self.chunk_depth.setValue(32)  # a placeholder: a 3D model sets the depth it was fitted on
        self.overlap.setValue(PAPER.overlap)
        self.threshold.setValue(CORE_DEFAULTS["threshold"])
        _select(self.blend, PAPER.blend)
        self.batch.setValue(CORE_DEFAULTS["batch"] or 0)  # 0: automatic, the engine's None
        self.tta.setChecked(CORE_DEFAULTS["tta"])
        self.probabilities.setChecked(CORE_DEFAULTS["probabilities"])

    def set_model(self, dims: str | None, patch_depth: int = 1, multiple: int = 32) -> None:
        """Suit the chunk fields to a model: steps of its required multiple, and for 3D models
        the chunk depth, starting at the depth they were fitted on."""
        is_3d = dims == "3d"
        self.chunk.setSingleStep(max(1, multiple))
        self.chunk_depth.setSingleStep(max(1, multiple))
        if is_3d and not self.chunk_depth.isEnabled():
            self.chunk_depth.setValue(max(1, patch_depth))
        self.chunk_depth.setEnabled(is_3d)

    def use_settings(self, chunk: int, overlap: float, blend: str) -> None:
        """Start from the chunk, overlap and blending a model's weights recommend (what its
        fit validated it with)."""
        self.chunk.setValue(int(chunk))
        self.overlap.setValue(float(overlap))
        _select(self.blend, blend)

    def values(self) -> OptionValues:
        return OptionValues(**{f.name: _read(getattr(self, f.name)) for f in fields(OptionValues)})

    def remember(self) -> None:
        for name, value in asdict(self.values()).items():
            if name in _REMEMBERED:
                self.settings.set(f"options/{name}", str(int(value) if isinstance(value, bool) else value))

    def _load(self) -> None:
        try:
            for name in _REMEMBERED:
                _write(getattr(self, name), self.settings.get(f"options/{name}"))
        except ValueError:
            self.restore_defaults()  # a hand-edited settings file must not stop the app


# Options remembered between sessions (a 3D model sets the chunk depth it was fitted on).
_REMEMBERED = [f.name for f in fields(OptionValues) if f.name != "chunk_depth"]


def _read(widget: QWidget) -> str | int | float | bool:
    if isinstance(widget, QComboBox):
        return str(widget.currentData())
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QDoubleSpinBox):
        return round(widget.value(), 4)
    return widget.value()


def _write(widget: QWidget, text: str) -> None:
    """Show a remembered value ("" leaves the widget as it is, except a check box: off)."""
    if isinstance(widget, QCheckBox):
        widget.setChecked(text == "1")
    elif isinstance(widget, QComboBox):
        _select(widget, text)
    elif text:
        widget.setValue(float(text) if isinstance(widget, QDoubleSpinBox) else int(text))


def _select(combo: QComboBox, value: str) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _spin(low: int, high: int, step: int, suffix: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setSuffix(suffix)
    return spin


def _double(low: float, high: float, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setDecimals(2)
    return spin
