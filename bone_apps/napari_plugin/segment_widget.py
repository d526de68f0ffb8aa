"""The "Segment bone" widget: DLPred's engine on an image layer, its labels added as a labels layer."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, SpinBox
from napari.layers import Image

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.reports import SliceProgress
from bone_apps.core.predict.segment_array import ArraySegmentation, SegmentStarted, segment_array
from bone_apps.napari_plugin.job_widget import Job, JobWidget, layers_of, level0

if TYPE_CHECKING:
    import napari

DEFAULTS = {f.name: f.default for f in fields(PredictConfig)}  # prediction's defaults, declared once


def device_choices() -> list[tuple[str, str]]:
    """(text, device) for the device list: automatic, CPU, then each GPU (found without torch)."""
    from bone_apps.core.jobs.monitor import gpu_count

    return [("Automatic (a GPU when present)", "auto"), ("CPU", "cpu")] + [
        (f"GPU {i}", f"cuda:{i}") for i in range(gpu_count())]


class SegmentBoneWidget(JobWidget):
    """Segment an image layer with a fitted model (a .pth file from DLFit or `bone fit`).

    The model runs with its own normalization and the inference settings its fit validated
    (core.segment_array), off the GUI thread; the labels appear as a new labels layer with the
    image's scale, named "<image> labels", holding the values DLPred writes (class indices, or
    the values of the masks the model was fitted on).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image = ComboBox(
            label="Image", choices=lambda _widget: [(name, layer) for name, layer in layers_of(viewer, Image)
                                                    if not layer.rgb],
            tooltip="The scan to segment: an image layer of slices (Z, Y, X) or one slice.")
        self.weights = FileEdit(
            label="Model", mode="r", filter="bone_apps models (*.pth *.onnx)",
            tooltip="A fitted model: the .pth weights file DLFit or `bone fit` wrote (or an .onnx "
                    "file from `bone export`).")
        self.threshold = FloatSpinBox(
            label="Threshold", min=0.0, max=1.0, step=0.05, value=DEFAULTS["threshold"],
            tooltip="A voxel whose most likely class has a lower probability becomes background; "
                    "0 keeps the model's best guess everywhere.")
        self.chunk = SpinBox(
            label="Chunk (px)", min=0, max=16384, step=32, value=0,
            tooltip="Edge of the square chunks the slices are cut into. 0: the chunk the fit "
                    "validated the model with. Lower it if the GPU runs out of memory.")
        self.device = ComboBox(label="Device", choices=device_choices(), value=DEFAULTS["device"],
                               tooltip="Where the model runs.")
        self.tta = CheckBox(text="Also segment mirrored copies (TTA)", value=DEFAULTS["tta"],
                            tooltip="Average over in-plane flips: smoother labels, four times the time.")
        super().__init__(viewer, [self.image, self.weights, self.threshold, self.chunk, self.device,
                                  self.tta], "Segment")
        self._placement: dict[str, Any] = {}  # name and placement of the image being segmented
        self.listen(viewer.layers.selection.events.active, self._follow_active)
        self._follow_active()

    def _follow_active(self, *_: Any) -> None:
        """Choose the active layer when it is an image: the widget works on what the user selected."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and not self.running():
            self.image.reset_choices()
            if active in self.image.choices:
                self.image.value = active

    def job(self) -> Job:
        layer = self.image.value
        if layer is None:
            raise BoneAppsError("There is no image layer to segment: open a scan first.")
        weights = self.weights.value
        if weights is None or str(weights) in ("", "."):
            raise BoneAppsError("Choose the model to segment with: the .pth file DLFit or bone fit wrote.")
        options: dict[str, Any] = {"threshold": self.threshold.value, "device": self.device.value,
                                   "tta": self.tta.value}
        if self.chunk.value:
            options["chunk"] = self.chunk.value
        # The labels go where the image is (not a reference to it: its data may be removed meanwhile).
        self._placement = {"name": f"{layer.name} labels", "scale": layer.scale, "translate": layer.translate,
                           "units": layer.units, "axis_labels": layer.axis_labels}
        return segment_array, (level0(layer), Path(weights)), {"name": layer.name, **options}

    def on_record(self, record: Any) -> None:
        if isinstance(record, SegmentStarted):
            self.progress.max = record.shape[0]
            self.progress.value = 0
            self.say(f"Segmenting {record.shape[0]} slices on {record.device} (batch {record.batch}; "
                     f"{record.settings})…")
        elif isinstance(record, SliceProgress):
            self.progress.value = record.done

    def on_result(self, result: ArraySegmentation) -> None:
        self.viewer.add_labels(
            result.labels, **self._placement,
            features={"index": list(result.label_values), "class": list(result.class_names)},
            metadata={"bone_apps": {"class_names": list(result.class_names),
                                    "label_values": list(result.label_values),
                                    "model": result.model, "settings": result.settings}})
        shares = ", ".join(f"{name} {100 * share:.1f} %"
                           for name, share in zip(result.class_names, result.fractions))
        self.say(f"Done: {shares}.")
