"""Advanced mode: every option of the fitting engine, grouped as the paper lists them (§2.3.1)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.data.augment import AugmentConfig
from bone_apps.core.data.sampling import Dims
from bone_apps.core.errors import BoneAppsError
from bone_apps.core.fit.config import FitConfig, Precision
from bone_apps.core.model.models import required_multiple
from bone_apps.core.model.weights import load_weights, summarize_meta
from bone_apps.core.options import described
from bone_apps.dlfit.choices import architecture_choices, encoder_choices
from bone_apps.dlfit.tips import TIPS, TORCHRUN_NOTE
from bone_apps.ui.pickers import WEIGHTS_FILTER, WEIGHTS_TITLE, PathPicker
from bone_apps.ui.settings import AppSettings

LABELS = {
    "device": {"auto": "Automatic (GPU if present)", "cpu": "CPU", "cuda": "One GPU",
               "cuda:all": "All GPUs (DataParallel)"},
    "precision": {"auto": "Automatic", "fp32": "32-bit", "fp16": "Mixed 16-bit",
                  "bf16": "Mixed bfloat16"},
    "dims": {"2d": "2D (paper)", "2.5d": "2.5D (neighbouring slices)", "3d": "3D (slabs)"},
    "norm": {"zscore": "Z-score (paper)", "minmax": "Min-max, robust (0.5–99.5 %)",
             "minmax-full": "Min-max, full range"},
    "init": {"auto": "ImageNet if online, else random", "random": "Random",
             "imagenet": "ImageNet", "file": "Weights file (transfer learning)"},
    "loss": {"jaccard": "Jaccard (paper)", "dice": "Dice", "focal-tversky": "Focal Tversky",
             "ce+jaccard": "Cross-entropy + Jaccard"},
    "optimizer": {"adam": "Adam (paper)", "adamw": "AdamW", "sgd": "SGD with momentum"},
    "scheduler": {"cosine": "Cosine, one cycle (paper)", "cosine-restarts":
                  "Cosine with warm restarts", "constant": "Constant"},
}
OPTIONS = described(FitConfig)  # each option's label, as messages name it too
_AUG_FIELDS = [f.name for f in fields(AugmentConfig)]
_AUTO_NONE = ("workers", "stats_workers", "weight_decay")  # minimum of the spin box = None


class LearningRateBox(QDoubleSpinBox):
    """A rate shown as 0.001 or 3e-05, stepping along 1, 2, 5, 10, 20, …"""

    def __init__(self) -> None:
        super().__init__()
        self.setDecimals(10)
        self.setRange(1e-7, 10.0)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt override
        return f"{value:.4g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt override
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):  # noqa: D102 - Qt override
        from PySide6.QtGui import QValidator

        try:
            float(text)
            return QValidator.State.Acceptable, text, pos
        except ValueError:
            return QValidator.State.Intermediate, text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt override
        value = self.value()
        for _ in range(abs(steps)):
            exponent = math.floor(math.log10(value) + 1e-9)
            mantissa = value / 10 ** exponent
            ladder = [1, 2, 5, 10] if steps > 0 else [0.5, 1, 2, 5]
            if steps > 0:
                mantissa = next(m for m in ladder if m > mantissa + 1e-9)
            else:
                mantissa = next(m for m in reversed(ladder) if m < mantissa - 1e-9)
            value = mantissa * 10 ** exponent
        self.setValue(value)


class AdvancedOptions(QWidget):
    """Widgets for every FitConfig option except the pairs and the output folder.

    `values()` gives FitConfig keyword arguments; `set_config()` shows a config.
    """

    changed = Signal()
    error = Signal(str)

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.w: dict[str, QWidget] = {}
        d = FitConfig(out="")
        aug = AugmentConfig()

        self.w["reproducible"] = self._check(OPTIONS["reproducible"].label)
        self.w["seed"] = self._int(0, 2**31 - 1, d.seed)
        self.w["device"] = self._combo("device", list(LABELS["device"]))
        self.w["precision"] = self._combo("precision", [m.value for m in Precision])
        self.w["workers"] = self._int(-1, 64, -1, special="Automatic")
        self.w["stats_workers"] = self._int(-1, 64, -1, special="Automatic")
        self.w["profile"] = self._check(OPTIONS["profile"].label)
        note = QLabel(TORCHRUN_NOTE)
        note.setWordWrap(True)
        note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.w["dims"] = self._combo("dims", list(OPTIONS["dims"].choices))
        self.w["context"] = self._int(0, 16, d.context)
        # Patch sizes step by what the network needs (models.required_multiple, before any model).
        depth_multiple, patch_multiple = required_multiple(None, Dims.D3), required_multiple(None, d.dims)
        self.w["patch_depth"] = self._int(depth_multiple, 512, d.patch_depth, step=depth_multiple)
        self.w["patch"] = self._int(patch_multiple, 4096, d.patch, step=patch_multiple)
        self.w["patches_per_tile"] = self._int(1, 256, d.patches_per_tile)
        self.w["max_overlap"] = self._float(0.0, 1.0, d.max_overlap, 0.05, 2)
        self.w["augment"] = self._check(OPTIONS["augment"].label)
        for name in _AUG_FIELDS:
            high = 0.5 if name == "brightness" else 3.0 if name.startswith("contrast") else 1.0
            self.w[name] = self._float(0.0, high, getattr(aug, name), 0.01, 3)
        self.w["norm"] = self._combo("norm", list(OPTIONS["norm"].choices))
        self.w["train_fraction"] = self._float(0.05, 0.95, d.train_fraction, 0.05, 2)
        self.w["arch"] = QComboBox()
        self.w["encoder"] = QComboBox()
        self.w["class_names"] = QLineEdit()
        self.w["class_names"].setPlaceholderText("from the masks (e.g. background, bone, pores)")
        self.w["init"] = self._combo("init", list(LABELS["init"]))
        self.init_file = PathPicker("A model.pth fitted with this software", settings,
                                    "init_file", TIPS["init_file"], WEIGHTS_FILTER,
                                    file_title=WEIGHTS_TITLE)
        self.init_file.folder_button.hide()
        self.init_file.changed.connect(self._adopt_weights)
        self.w["loss"] = self._combo("loss", list(OPTIONS["loss"].choices))
        self.w["optimizer"] = self._combo("optimizer", list(OPTIONS["optimizer"].choices))
        self.w["weight_decay"] = self._float(-0.0001, 1.0, -0.0001, 0.001, 4, special="Automatic")
        self.w["scheduler"] = self._combo("scheduler", list(OPTIONS["scheduler"].choices))
        self.w["restart_epochs"] = self._int(1, 1000, d.restart_epochs)
        self.w["epochs"] = self._int(1, 10000, d.epochs)
        self.w["lr"] = LearningRateBox()
        self.w["batch"] = self._int(1, 4096, d.batch)
        for key, widget in self.w.items():
            widget.setToolTip(TIPS.get(key, ""))

        for key, suffix in (("context", " slices each side"), ("patch_depth", " slices"), ("patch", " px")):
            self.w[key].setSuffix(suffix)
        groups = [
            ("Reproducibility", [("reproducible", ""), ("seed", None)]),
            ("Device", [("device", None), ("precision", None), ("workers", None), ("stats_workers", None),
                        ("profile", ""), (note, "")]),
            ("Fitting mode", [("dims", None), ("context", None), ("patch_depth", None)]),
            ("Patch cropping", [("patch", None), ("patches_per_tile", None), ("max_overlap", None)]),
            ("Augmentation", [("augment", ""), ("p_hflip", "Horizontal flip chance:"),
                              ("p_vflip", "Vertical flip chance:"), ("p_rotate", "Rotation chance:"),
                              ("p_brightness", "Brightness chance:"), ("brightness", "Brightness ±:"),
                              ("p_contrast", "Contrast chance:"), ("contrast_low", "Contrast from:"),
                              ("contrast_high", "Contrast to:")]),
            ("Normalization", [("norm", None)]),
            ("Training / validation split", [("train_fraction", None)]),
            ("Model", [("arch", None), ("encoder", None), ("class_names", None)]),
            ("Initial weights", [("init", None), (self.init_file, "File:")]),
            ("Loss, optimizer, scheduler", [("loss", None), ("optimizer", None), ("weight_decay", None),
                                            ("scheduler", None), ("restart_epochs", None)]),
            ("Hyperparameters", [("epochs", None), ("lr", None), ("batch", None)]),
        ]
        column = QVBoxLayout(self)  # one column in the paper's order; the window scrolls it
        column.setContentsMargins(0, 0, 0, 0)
        for title, rows in groups:
            box = QGroupBox(title)
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            for item, label in rows:  # None: the option's label (FitConfig's metadata)
                label = OPTIONS[item].label + ":" if label is None else label
                widget = self.w[item] if isinstance(item, str) else item
                form.addRow(label, widget) if label else form.addRow(widget)
            column.addWidget(box)
        column.addStretch(1)

        self.w["dims"].currentIndexChanged.connect(self._fill_architectures)
        self.w["arch"].currentIndexChanged.connect(self._fill_encoders)
        for key in ("dims", "augment", "init", "scheduler"):
            signal = self.w[key].toggled if key == "augment" else self.w[key].currentIndexChanged
            signal.connect(self._update_enabled)
        self._fill_architectures()
        self.set_config(d)

    # -- widget helpers -------------------------------------------------------------------------
    def _emit_changed(self, *_: object) -> None:
        self.changed.emit()

    def _check(self, text: str) -> QCheckBox:
        box = QCheckBox(text)
        box.toggled.connect(self._emit_changed)
        return box

    def _int(self, low: int, high: int, value: int, step: int = 1, special: str = "") -> QSpinBox:
        return self._spin(QSpinBox(), low, high, value, step, special)

    def _float(self, low: float, high: float, value: float, step: float, decimals: int,
               special: str = "") -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setDecimals(decimals)  # before the range and value, which it rounds
        return self._spin(box, low, high, value, step, special)

    def _spin(self, box, low, high, value, step, special: str):
        box.setRange(low, high)
        box.setSingleStep(step)
        box.setSpecialValueText(special)
        box.setValue(value)
        box.valueChanged.connect(self._emit_changed)
        return box

    def _combo(self, key: str, values: list[str]) -> QComboBox:
        box = QComboBox()
        for value in values:
            box.addItem(LABELS.get(key, {}).get(value, value), value)
        box.currentIndexChanged.connect(self._emit_changed)
        return box

    @staticmethod
    def _select(box: QComboBox, value: str) -> None:
        index = box.findData(value)
        if index < 0:  # a value from a loaded file that the list lacks (e.g. cuda:0,1)
            box.addItem(value, value)
            index = box.count() - 1
        box.setCurrentIndex(index)

    def _fill_architectures(self) -> None:
        box, current = self.w["arch"], self.w["arch"].currentData()
        box.blockSignals(True)
        box.clear()
        for name in architecture_choices(self.w["dims"].currentData()):
            box.addItem(name, name)
        index = box.findData(current)
        box.setCurrentIndex(max(0, index))
        box.blockSignals(False)
        self._fill_encoders()

    def _fill_encoders(self) -> None:
        box, current = self.w["encoder"], self.w["encoder"].currentData()
        box.blockSignals(True)
        box.clear()
        for name in encoder_choices(self.w["arch"].currentData(), self.w["dims"].currentData()):
            box.addItem(name, name)
        box.setCurrentIndex(max(0, box.findData(current)))
        box.blockSignals(False)
        self.changed.emit()

    def _update_enabled(self) -> None:
        dims = self.w["dims"].currentData()
        multiple = required_multiple(None, dims)
        self.w["patch"].setSingleStep(multiple)
        self.w["patch"].setMinimum(multiple)
        self.w["context"].setEnabled(dims == "2.5d")
        self.w["patch_depth"].setEnabled(dims == "3d")
        for name in _AUG_FIELDS:
            self.w[name].setEnabled(self.w["augment"].isChecked())
        self.init_file.setEnabled(self.w["init"].currentData() == "file")
        self.w["restart_epochs"].setEnabled(self.w["scheduler"].currentData() == "cosine-restarts")

    def _adopt_weights(self, text: str) -> None:
        """Transfer learning: take the fitting mode, architecture and encoder of the file."""
        path = Path(text.strip()).expanduser()
        if not path.is_file() or path.suffix.lower() not in (".pth", ".pt"):
            return
        try:
            _, meta = load_weights(path)
        except BoneAppsError as exc:
            self.error.emit(str(exc))
            return
        for key in ("dims", "arch", "encoder"):
            self._select(self.w[key], str(meta[key]))
        if meta["dims"] == "2.5d":
            self.w["context"].setValue(int(meta.get("context", 1)))
        self.init_file.edit.setToolTip(f"{TIPS['init_file']}\n\n{summarize_meta(meta)}")

    # -- values ---------------------------------------------------------------------------------
    def values(self) -> dict:
        """FitConfig keyword arguments of everything shown here."""
        result: dict = {}
        for key, widget in self.w.items():
            if isinstance(widget, QComboBox):
                result[key] = widget.currentData()
            elif isinstance(widget, QCheckBox):
                result[key] = widget.isChecked()
            elif isinstance(widget, QLineEdit):
                result[key] = tuple(n.strip() for n in widget.text().split(",") if n.strip())
            elif key in _AUTO_NONE and widget.value() == widget.minimum():
                result[key] = None
            else:
                result[key] = widget.value()
        if result["init"] == "file":
            path = self.init_file.path()
            result["init"] = str(path) if path else "weights-file-not-chosen.pth"
        result["augmentation"] = AugmentConfig(**{n: result.pop(n) for n in _AUG_FIELDS})
        return result

    def set_config(self, config: FitConfig) -> None:
        """Show `config`'s options (the pairs and output folder are the window's)."""
        data = config.to_dict()
        data.update(data.pop("augmentation"))
        init = str(data["init"])
        if init not in LABELS["init"]:
            self.init_file.set_path(init)
            data["init"] = "file"
        for key in ("dims", "arch"):  # the lists below them depend on these
            self._select(self.w[key], str(data[key]))
        for key, widget in self.w.items():
            value = data.get(key)
            if isinstance(widget, QComboBox):
                self._select(widget, str(value))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            elif isinstance(widget, QLineEdit):
                widget.setText(", ".join(value or ()))
            elif value is None and key in _AUTO_NONE:
                widget.setValue(widget.minimum())
            elif value is not None:
                widget.setValue(value)
        self._update_enabled()
