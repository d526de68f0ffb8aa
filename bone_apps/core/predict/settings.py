"""The inference settings (chunk, overlap, blending) a run uses, and those a model recommends.

Fitting checks the fitted model with the default windows and with windows the size of its
training patches and records in the weights the settings that reproduce its validation
("inference"); prediction takes them for every setting the user leaves open.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from bone_apps.core.predict.windows import BlendMode

if TYPE_CHECKING:
    from bone_apps.core.predict.config import PredictConfig

DEFAULT_CHUNK = 512  # the paper's prediction chunk
DEFAULT_OVERLAP = 0.25
PATCH_OVERLAP = 0.5  # with Gaussian blending when windows are only the training patch's size


@dataclass(frozen=True)
class InferenceSettings:
    """How prediction cuts and merges a scan: chunk edge, overlap and blending."""

    chunk: int = DEFAULT_CHUNK
    overlap: float = DEFAULT_OVERLAP
    blend: str = BlendMode.MEAN.value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> InferenceSettings:
        """The settings a weights file recommends (the paper's for files that say nothing)."""
        data = meta.get("inference") or {}
        return cls(int(data.get("chunk") or DEFAULT_CHUNK),
                   float(data.get("overlap", DEFAULT_OVERLAP)),
                   BlendMode.parse(data.get("blend") or BlendMode.MEAN.value).value)

    @classmethod
    def patch_sized(cls, patch: int) -> InferenceSettings:
        """Windows the size of the training patches, half-overlapping, Gaussian-blended."""
        return cls(int(patch), PATCH_OVERLAP, BlendMode.GAUSSIAN.value)

    def text(self) -> str:
        return f"{self.chunk} px chunks, overlap {self.overlap:g}, {self.blend} blending"


def with_model_settings(config: PredictConfig, meta: dict) -> tuple[PredictConfig, str]:
    """`config` with the chunk, overlap and blend it leaves open taken from the weights (what
    the fit validated the model with), and a sentence saying so ("" when all were given)."""
    recommended = InferenceSettings.from_meta(meta)
    open_fields = {name: getattr(recommended, name) for name in ("chunk", "overlap", "blend")
                   if getattr(config, name) is None}
    if not open_fields:
        return config, ""
    config = replace(config, **open_fields)
    note = ""
    if meta.get("inference"):
        validated = meta["inference"]
        used = InferenceSettings(config.chunk, config.overlap, config.blend.value)
        val_iou = validated.get("val_iou", float("nan"))
        note = f"; predicting with {used.text()} as the fit validated it (whole-slice mIoU {val_iou:.4f})"
        if validated.get("window_dependent"):
            note += (", because larger windows changed this model's labels "
                     f"({validated.get('agreement', 0):.1%} agreement)")
    return config, note
