"""The weights file: one `.pth` holding a model's parameters and everything needed to rebuild it.

Layout (format 2): `{"format": WEIGHTS_FORMAT, "state_dict": {name: tensor}, "meta": {"spec":
ModelSpec.to_meta(), "fit_config": {...}, "split": {"train": [ids], "val": [ids], ...},
"metrics": {...}, "best_epoch": n, ...}}`, plain types only (str, int, float, bool, None, lists
and dicts of them). Format 1 files kept the spec's keys at the top of "meta" and no split; they
still load. `load_weights` gives both as the same flat metadata (the spec's keys beside the
others). Loading uses `torch.load(weights_only=True)`, which refuses pickled code, and then
checks the format and the metadata, so a foreign or crafted file is rejected with one sentence
and never executed.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

from bone_apps.core.errors import WeightsError
from bone_apps.core.io.labels import LabelMap
from bone_apps.core.io.outputs import atomic_target
from bone_apps.core.model.spec import SPEC_KEYS, ModelSpec

if TYPE_CHECKING:
    import torch

WEIGHTS_FORMAT = "bone_apps.weights/2"
WEIGHTS_FORMAT_1 = "bone_apps.weights/1"  # the spec's keys at the top of meta, no split
_FORMAT_PREFIX = "bone_apps.weights/"
DIMS = ("2d", "2.5d", "3d")
# Metadata a file must carry for prediction to rebuild and feed the model.
REQUIRED_META = (
    "version", "dims", "arch", "encoder", "in_channels", "classes", "class_names", "patch_size",
    "context", "patch_depth", "norm", "required_multiple",
)
# Filled in by save_weights when the caller leaves them out.
OPTIONAL_META = ("fit_config", "split", "best_epoch", "metrics", "date", "torch_version", "smp_version")


def software_version() -> str:
    """The version string stored in weights: "X.Y.Z standalone"."""
    from bone_apps import __version__

    return f"{__version__} standalone"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and type(model).__name__ in ("DataParallel", "DistributedDataParallel"):
            inner = model.module
        if inner is None:
            return model
        model = inner


def weights_meta(spec: ModelSpec, fit_config: dict, split: dict | None, metrics: dict,
                 best_epoch: int | None = None, **extra: object) -> dict:
    """The metadata fitting saves with a model (save_weights), as load_weights gives it back.

    Args:
        spec: the network.
        fit_config: FitConfig.to_dict() of the run.
        split: Split.to_dict(): the scan ids that fitted ("train") and validated ("val").
        metrics: the best epoch's scores.
        best_epoch: the epoch the parameters come from.
        extra: further plain entries (e.g. "inference").
    """
    return {"version": software_version(), **spec.to_meta(), "fit_config": dict(fit_config),
            "split": None if split is None else dict(split), "metrics": dict(metrics),
            "best_epoch": best_epoch, **extra}


def _to_file(meta: dict) -> dict:
    """Flat metadata in format 2's layout: the spec's keys under "spec"."""
    return {"spec": {k: v for k, v in meta.items() if k in SPEC_KEYS},
            **{k: v for k, v in meta.items() if k not in SPEC_KEYS}}


def _from_file(fmt: str, meta: object) -> object:
    """The flat metadata of a format 1 or 2 file (None where the layout is wrong)."""
    if not isinstance(meta, dict):
        return None
    if fmt == WEIGHTS_FORMAT_1:
        return {**meta, "split": meta.get("split")}
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        return {k: v for k, v in meta.items() if k != "spec"}  # lacks the spec: refused below
    return {**{k: v for k, v in meta.items() if k != "spec"}, **spec}


def _check_plain(value: object, where: str) -> None:
    """Raise TypeError unless `value` is JSON-like plain data (weights_only can load it)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"weights metadata key {key!r} in {where} is not a string")
            _check_plain(item, f"{where}.{key}")
        return
    raise TypeError(f"weights metadata {where} is a {type(value).__name__}, not plain data")


def _plain(value: object) -> object:
    """Tuples become lists so the saved metadata equals what loading returns."""
    return json.loads(json.dumps(value))


def save_weights(path: Path, model: torch.nn.Module, meta: dict) -> Path:
    """Write `model`'s parameters and `meta` to `path` atomically (temporary name, then rename).

    Args:
        path: the .pth file to write (replaced if present).
        model: the model, possibly wrapped in DataParallel, DDP or torch.compile.
        meta: metadata with at least REQUIRED_META; "date", "torch_version", "smp_version",
            "version" are filled in when absent.

    Returns:
        The path written.
    """
    import torch

    path = Path(path)
    meta = dict(meta)
    meta.setdefault("version", software_version())
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"weights metadata lacks {', '.join(missing)}")
    if meta["dims"] not in DIMS:
        raise ValueError(f"weights metadata dims {meta['dims']!r} is not one of {DIMS}")
    meta.setdefault("date", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    meta.setdefault("torch_version", torch.__version__)
    try:
        import segmentation_models_pytorch as smp

        meta.setdefault("smp_version", smp.__version__)
    except ImportError:
        meta.setdefault("smp_version", None)
    for key in ("fit_config", "metrics"):
        meta.setdefault(key, {})
    meta.setdefault("split", None)
    meta.setdefault("best_epoch", None)
    _check_plain(meta, "meta")
    state = {k: v.detach().to("cpu").clone().contiguous()
             for k, v in unwrap_model(model).state_dict().items()}
    payload = {"format": WEIGHTS_FORMAT, "state_dict": state, "meta": _plain(_to_file(meta))}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a weights file safely.

    Returns:
        (state_dict, meta): meta flat, the same for format 1 and 2 files (the spec's keys beside
        fit_config, split, metrics, best_epoch, ...; split is None in format 1 files).

    Raises:
        WeightsError: the file is missing or unreadable, is not a bone_apps weights file
            (including pickles that would run code), has an unknown format version, or
            lacks metadata.
    """
    import torch

    path = Path(path).expanduser()
    if path.is_dir():
        inside = path / "model.pth"
        hint = f" (this fit run's weights are {inside})" if inside.is_file() else ""
        raise WeightsError(f"{path} is a folder, not a weights file: choose the .pth file written "
                           f"by bone fit{hint}.")
    if not path.is_file():
        raise WeightsError(f"{path} does not exist: choose a .pth weights file written by bone fit.")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes), not a bone_apps weights file: copy it "
                           "again or choose another weights file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not our file"
        if _damaged_zip(path):
            raise WeightsError(
                f"{path} is incomplete or damaged (it ends too early or its contents do not "
                "add up, e.g. a copy or download that was cut short); it was not loaded: copy "
                "it again or choose another weights file.") from None
        raise WeightsError(
            f"{path} is not a bone_apps weights file ({_unreadable_reason(path, exc)}); it was "
            "not loaded: choose a weights file written by bone fit.") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise WeightsError(f"{path} is a PyTorch file but not a bone_apps weights file: choose a "
                           "weights file written by bone fit.")
    fmt = payload["format"]
    if fmt not in (WEIGHTS_FORMAT, WEIGHTS_FORMAT_1):
        if isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX):
            raise WeightsError(f"{path} has weights format {fmt}, which this version ({WEIGHTS_FORMAT}) "
                               "cannot read: update bone_apps.")
        raise WeightsError(f"{path} has an unknown format {fmt!r}: choose a weights file written "
                           "by bone fit.")
    state, meta = payload.get("state_dict"), _from_file(fmt, payload.get("meta"))
    if (not isinstance(state, dict) or not state
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise WeightsError(f"{path} has no usable parameters: fit the model again.")
    if not isinstance(meta, dict):
        raise WeightsError(f"{path} has no metadata: fit the model again with bone fit.")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise WeightsError(f"{path} lacks metadata ({', '.join(missing)}): fit the model again "
                           "with this version of bone fit.")
    _check_parameters(path, state, meta)
    return state, meta


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load refused `path`, in words: code in a pickle, a web page or text saved
    under a .pth name (a failed download), or PyTorch's own first line."""
    try:
        with open(path, "rb") as file:
            head = file.read(512).lstrip().lower()
    except OSError:
        head = b""
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "it is a web page, e.g. a sign-in or error page saved instead of a download"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is a text file"
    # With weights_only, torch names that option for anything it cannot unpickle safely.
    if "weights_only" in str(exc) or "Unsupported global" in str(exc):
        return "it contains code or objects that are not plain data"
    return str(exc).split("\n")[0].strip() or "PyTorch cannot read it"


def _damaged_zip(path: Path) -> bool:
    """True for a PyTorch (zip) file that cannot be read to the end: truncated or corrupted."""
    import zipfile

    try:
        with open(path, "rb") as file:
            if file.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return True


def _in_channels_of(state: dict) -> int | None:
    """Input channels of the network's first convolution: the first tensor of 4 or 5
    dimensions (out, in, kh, kw[, kd]) in registration order, which is the stem."""
    for value in state.values():
        if value.ndim in (4, 5) and value.is_floating_point():
            return int(value.shape[1])
    return None


def _check_parameters(path: Path, state: dict, meta: dict) -> None:
    """Refuse parameters that cannot give a sound prediction: NaN or infinite values, input
    channels that differ from the metadata, or metadata channels the scan mode cannot feed."""
    import torch

    bad = [name for name, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise WeightsError(
            f"{path} holds parameters that are not numbers (NaN or infinity, in {len(bad)} "
            f"tensor(s) such as {bad[0]}), so fitting went wrong: fit again (e.g. with a lower "
            "learning rate) or choose another weights file.")
    try:
        declared = int(meta["in_channels"])
        context = int(meta.get("context") or 0)
    except (TypeError, ValueError):
        raise WeightsError(f"{path} has unusable metadata (in_channels "
                           f"{meta.get('in_channels')!r}): fit the model again with bone fit.") from None
    needed = 2 * context + 1 if meta.get("dims") == "2.5d" else 1
    if declared != needed:
        mode = (f"2.5d with {context} slice(s) of context" if meta.get("dims") == "2.5d"
                else str(meta.get("dims")))
        raise WeightsError(f"{path} says its model takes {declared} input channel(s) but a {mode} "
                           f"model takes {needed}: fit the model again with bone fit.")
    actual = _in_channels_of(state)
    if actual is not None and actual != declared:
        raise WeightsError(f"{path} holds a model with {actual} input channel(s) but its metadata "
                           f"says {declared}: the file was changed or mixed up; fit the model "
                           "again or choose another weights file.")
    try:
        LabelMap.from_dict(meta, int(meta["classes"]))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path} has unusable metadata ({exc}): fit the model again with "
                           "bone fit.") from None


def summarize_meta(meta: dict) -> str:
    """A few human-readable lines describing a weights file's model."""
    names = meta.get("class_names") or [str(i) for i in range(int(meta.get("classes", 0)))]
    dims = meta.get("dims", "?")
    shape = f"{meta.get('patch_size')} px"
    if dims == "3d":
        shape = f"{meta.get('patch_depth')} x {meta.get('patch_size')} x {meta.get('patch_size')} voxels"
    elif dims == "2.5d":
        shape += f", {meta.get('context')} slices of context on each side"
    lines = [
        f"model: {meta.get('arch')} with {meta.get('encoder')} encoder, {dims}, "
        f"{meta.get('in_channels')} input channel(s)",
        f"classes: {meta.get('classes')} ({', '.join(names)})",
        f"patch: {shape}; normalization: {meta.get('norm')}",
    ]
    metrics = meta.get("metrics") or {}
    if "val_iou" in metrics:
        lines.append(f"best validation IoU: {metrics['val_iou']:.4f} (epoch {meta.get('best_epoch')})")
    lines.append(f"fitted: {meta.get('date', 'unknown date')} with bone_apps {meta.get('version')}")
    return "\n".join(lines)
