"""The "Score labels (IoU)" widget: IoU and Dice per class of one labels layer against another."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Label, LineEdit, Table
from napari.layers import Labels

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.predict.segment_array import ArrayVolume
from bone_apps.core.score.metrics import IoUResult
from bone_apps.core.score.scoring import ScoreProgress, score_stacks
from bone_apps.napari_plugin.job_widget import Job, JobWidget, layers_of, level0

if TYPE_CHECKING:
    import napari

# score_stacks' own default, declared there.
_IGNORE_BACKGROUND = inspect.signature(score_stacks).parameters["ignore_background"].default
COLUMNS = ("label", "IoU", "Dice", "reference voxels", "predicted voxels")  # one row per class


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def class_names_of(layer: Labels | None) -> list[str]:
    """The class names a labels layer carries (a "Segment bone" result's), else none."""
    if layer is None:
        return []
    return list((layer.metadata.get("bone_apps") or {}).get("class_names") or [])


class ScoreLabelsWidget(JobWidget):
    """Score a prediction labels layer against a reference labels layer, as the IoU app does.

    Both layers go through core.scoring.score_stacks (slice by slice, off the GUI thread): IoU
    and Dice per class, their means, and the mean IoU of each slice. Labels with values other
    than 0..N-1 (e.g. 0/255 masks) are matched by value.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        def choices(_widget: Any) -> list:
            return layers_of(viewer, Labels)

        self.reference = ComboBox(label="Reference", choices=choices,
                                  tooltip="The labels taken as true (e.g. a hand-made mask).")
        self.prediction = ComboBox(label="Prediction", choices=choices,
                                   tooltip="The labels to score (e.g. a Segment bone result).")
        self.class_names = LineEdit(
            label="Class names", value="",
            tooltip="Names of the classes in label order, separated by commas (e.g. background, "
                    "bone, pores). Empty: the prediction's own names when Segment bone made it.")
        self.ignore_background = CheckBox(text="Leave background (0) out of the means",
                                          value=_IGNORE_BACKGROUND)
        self.table = Table(value={"data": [], "index": [], "columns": list(COLUMNS)})
        self.means = Label(value="")
        super().__init__(viewer, [self.reference, self.prediction, self.class_names,
                                  self.ignore_background], "Score")
        self.extend([self.means, self.table])
        self.result: IoUResult | None = None
        self._scored = ("", "")  # the names of the reference and prediction being scored
        self._pick_distinct()

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        self._pick_distinct()

    def _pick_distinct(self) -> None:
        """With two labels layers or more, start with two different ones (top one as prediction)."""
        layers = [layer for _, layer in layers_of(self.viewer, Labels)]
        if len(layers) >= 2 and self.reference.value == self.prediction.value:
            self.prediction.value, self.reference.value = layers[0], layers[1]

    def job(self) -> Job:
        reference, prediction = self.reference.value, self.prediction.value
        if reference is None or prediction is None:
            raise BoneAppsError("Scoring needs two labels layers: open or make a reference and a prediction.")
        # `==`, not `is`: napari hands plugins its layers behind proxies made at each access.
        if reference == prediction:
            raise BoneAppsError(f"{reference.name} is both the reference and the prediction: choose "
                                "two different labels layers.")
        names = [n.strip() for n in self.class_names.value.split(",") if n.strip()]
        names = names or class_names_of(prediction) or class_names_of(reference)
        self._scored = (reference.name, prediction.name)
        volumes = tuple(ArrayVolume(self._stack(layer), layer.name, role="mask")
                        for layer in (reference, prediction))
        return score_stacks, volumes, {"class_names": names or None,
                                       "ignore_background": self.ignore_background.value}

    @staticmethod
    def _stack(layer: Labels) -> Any:
        data = level0(layer)
        return data[None] if data.ndim == 2 else data  # one slice: a stack of one

    def on_record(self, record: Any) -> None:
        if isinstance(record, ScoreProgress):
            self.progress.max = max(1, record.total)
            self.progress.value = record.done
            self.say(f"Scoring slice {record.done} of {record.total}…")

    def on_result(self, result: IoUResult) -> None:
        self.result = result
        self.table.value = {
            "data": [[c.label, _score(c.iou), _score(c.dice), c.reference_voxels, c.predicted_voxels]
                     for c in result.classes],
            "index": [c.name for c in result.classes], "columns": list(COLUMNS)}
        self.means.value = f"mean IoU {_score(result.mean_iou)}, mean Dice {_score(result.mean_dice)}"
        self.say(f"Scored {self._scored[1]} against {self._scored[0]} over {result.voxels:,} voxels.")
