"""FitConfig: every option of a fitting run, with the paper's defaults, as a frozen dataclass.

The CLI fills it from flags (and an optional JSON file), the desktop app from its widgets;
it is saved as config.json next to the outputs and embedded in the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bone_apps.core.data.normalize import NormMethod
from bone_apps.core.data.sampling import AugmentConfig, Dims
from bone_apps.core.errors import FitConfigError
from bone_apps.core.io.labels import check_class_names
from bone_apps.core.io.outputs import write_atomic

INIT_CHOICES = ("random", "imagenet", "auto")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Options that may change when a run is resumed because they do not change the numbers.
# `epochs` may change too, to a total above the epochs already done (see resumed_config).
# The single list the CLI, the engine and DLFit use.
RESUMABLE_CHANGES = frozenset({"out", "workers", "stats_workers", "cache_dir", "device",
                               "profile"})
# Options compared as paths: the same place written another way is no change.
_PATH_OPTIONS = frozenset({"data", "cache_dir", "out"})


@dataclass(frozen=True)
class FitConfig:
    """Options of one fitting run.

    Data: `data` (ROOT with scans/<id> and masks/<id>) and/or `pairs` ((scan, mask) paths);
    `val_scans` names validation scans explicitly, otherwise `train_fraction` of the whole
    scans (shuffled with `seed`) fit and the rest validate. `level`: read OME-Zarr scans and
    masks at this resolution level (formats.at_level; None: as given).
    Patches: `dims` 2d / 2.5d (`context` slices on each side) / 3d (`patch_depth` slices);
    `patch` px squares, `patches_per_tile` per tile with pairwise overlap <= `max_overlap`.
    Model: smp `arch` and `encoder` (3D: "BasicUNet" with width "tiny" / "small" / "base");
    `init` random, imagenet, auto (ImageNet when it can be had, random otherwise) or the
    path of a weights file of this suite (transfer learning).
    Fitting: `loss`, `optimizer`, `lr`, `weight_decay` (None: per optimizer), `scheduler`
    (cosine, cosine-restarts every `restart_epochs`, constant), `epochs`, `batch` (patches per
    update; split over GPUs / ranks). `device` auto, cpu, cuda, cuda:N, cuda:0,1 or cuda:all;
    `precision` auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16. `workers` DataLoader
    processes (None: from the core count). `reproducible` adds deterministic algorithms.
    Validation: after each epoch the central `val_slices` slices of every validation scan
    (0: all) are predicted whole, as prediction runs, and that score picks the best epoch;
    -1 scores patches only.
    `easy` applies the paper's BP-2D-03 recipe adapted to small data: patches shrink to the
    smallest slice (larger patches, more context, predict best on new scans) and the batch
    shrinks until an epoch holds fit.EASY_MIN_STEPS updates.
    """

    out: str
    data: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    level: int | None = None
    val_scans: tuple[str, ...] = ()
    train_fraction: float = 0.8
    seed: int = 42
    reproducible: bool = False
    dims: str = "2d"
    context: int = 1
    patch: int = 256
    patch_depth: int = 16
    patches_per_tile: int = 4
    max_overlap: float = 0.5
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    norm: str = "zscore"
    arch: str = "Unet"
    encoder: str = "resnet18"
    init: str = "auto"
    class_names: tuple[str, ...] = ()
    loss: str = "jaccard"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float | None = None
    scheduler: str = "cosine"
    restart_epochs: int = 5
    epochs: int = 25
    batch: int = 64
    val_slices: int = 64
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    stats_workers: int | None = None
    cache_dir: str | None = None
    profile: bool = True
    easy: bool = False

    def __post_init__(self) -> None:
        if self.class_names:  # repeated or file-clashing names are refused before any work
            check_class_names(self.class_names, FitConfigError)

    # JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        data["val_scans"] = list(self.val_scans)
        data["class_names"] = list(self.class_names)
        data["augmentation"] = self.augmentation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FitConfig:
        """Build from a dict (e.g. JSON); unknown keys are an error naming the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FitConfigError(f"unknown option(s) {', '.join(unknown)}: valid options are "
                                 f"{', '.join(sorted(names))}.")
        data = dict(data)
        if "out" not in data:
            raise FitConfigError("the configuration has no output folder: set \"out\".")
        if "pairs" in data:
            data["pairs"] = tuple((str(s), str(m)) for s, m in data["pairs"])
        for key in ("val_scans", "class_names"):
            if key in data and data[key] is not None:
                data[key] = tuple(str(v) for v in data[key])
        if isinstance(data.get("augmentation"), dict):
            try:
                data["augmentation"] = AugmentConfig.from_dict(data["augmentation"])
            except TypeError as exc:
                raise FitConfigError(f"augmentation options are invalid ({exc}).") from None
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: Path) -> Path:
        """Write as JSON atomically."""
        return write_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> FitConfig:
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise FitConfigError(f"{path} cannot be read ({exc.strerror}): check the path.") from None
        except ValueError as exc:
            raise FitConfigError(f"{path} is not valid JSON ({exc}): fix the file.") from None

    def replace(self, **changes) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def differences(self, other: FitConfig, ignore: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
        """Names of options that differ, leaving out `ignore` and options that act in neither
        (e.g. context outside 2.5D). Augmentation chances are named one by one (p_hflip, ...);
        paths naming the same place are equal."""
        a, b = _comparable(self), _comparable(other)
        inert = _inert(self) & _inert(other)
        return [k for k in a if k not in ignore and k not in inert and a[k] != b[k]]

    # Checks ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise FitConfigError for values that can never work (data-independent checks)."""
        from bone_apps.core.model.losses import check_names

        Dims.parse(self.dims)
        NormMethod.parse(self.norm)
        check_names(self.loss, self.optimizer, self.scheduler)
        if not self.data and not self.pairs:
            raise FitConfigError("no scans to fit: give --data ROOT or --pair SCAN MASK.")
        positive = {"patch": self.patch, "patches_per_tile": self.patches_per_tile,
                    "epochs": self.epochs, "batch": self.batch, "patch_depth": self.patch_depth,
                    "restart_epochs": self.restart_epochs}
        for name, value in positive.items():
            if int(value) < 1:
                raise FitConfigError(f"{name.replace('_', ' ')} must be at least 1 (got {value}).")
        if int(self.val_slices) < -1:
            raise FitConfigError(f"val slices must be -1 (patches only), 0 (all) or more (got "
                                 f"{self.val_slices}).")
        if self.context < 0:
            raise FitConfigError(f"context must be 0 or more slices (got {self.context}).")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise FitConfigError(f"max overlap {self.max_overlap} must be a fraction between 0 "
                                 "and 1.")
        if not self.lr > 0:
            raise FitConfigError(f"learning rate {self.lr} must be positive (e.g. 0.001).")
        if self.precision not in PRECISIONS:
            raise FitConfigError(f"precision {self.precision!r} is unknown: use one of "
                                 f"{', '.join(PRECISIONS)}.")
        if self.init not in INIT_CHOICES and not self.init.lower().endswith((".pth", ".pt")):
            raise FitConfigError(f"initial weights {self.init!r} are unknown: use random, "
                                 "imagenet, auto or the path of a .pth weights file.")
        if self.workers is not None and self.workers < 0:
            raise FitConfigError("workers must be 0 or more.")


def _path(text) -> str:
    return os.path.abspath(os.path.expanduser(str(text)))


def _comparable(config: FitConfig) -> dict:
    """Option values as resuming compares them: paths resolved, augmentation spread out."""
    data = config.to_dict()
    for key in _PATH_OPTIONS:
        if data[key]:
            data[key] = _path(data[key])
    data["pairs"] = [[_path(s), _path(m)] for s, m in data["pairs"]]
    if str(data["init"]).lower().endswith((".pth", ".pt")):
        data["init"] = _path(data["init"])
    data["dims"] = str(data["dims"]).lower()
    data.update(data.pop("augmentation"))
    return data


def _inert(config: FitConfig) -> set[str]:
    """Options that have no effect in `config` (their values need not match on resume)."""
    inert = set()
    if config.dims.lower() != "2.5d":
        inert.add("context")
    if config.dims.lower() != "3d":
        inert.add("patch_depth")
    if config.scheduler.strip().lower() != "cosine-restarts":
        inert.add("restart_epochs")
    if not config.augment:
        inert.update(config.augmentation.to_dict())
    if config.val_scans:
        inert.add("train_fraction")
    return inert


def _flag(name: str) -> str:
    """The command-line flag of an option (DLFit shows its label instead)."""
    if name == "pairs":
        return "--pair"
    if name.startswith("p_") and name in AugmentConfig().to_dict():
        return f"--aug-{name[2:]}"
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "automatic"
    if isinstance(value, (list, tuple)):
        text = ", ".join(" ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
                         for v in value) or "none"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def resumed_config(saved: FitConfig, requested: FitConfig, epochs_done: int, where: str,
                   original: FitConfig | None = None) -> FitConfig:
    """The configuration a resumed run goes on with, or the sentence saying why it cannot.

    This is the one rule for `bone fit --resume`, the engine and DLFit's Resume: options in
    RESUMABLE_CHANGES (output folder, processes, cache, device, profiling) are taken from
    `requested`; `epochs` may change to any total above `epochs_done` (with the cosine
    schedule the learning rate then follows the cosine planned over the new total from the
    epoch the run stands at; see core.fit); every other option must equal the run's.

    Args:
        saved: the run's configuration (as fitted; Easy mode may have adapted it).
        requested: the options asked for now.
        epochs_done: epochs the run has finished.
        where: the run's folder, for the message.
        original: what the run's user asked for before Easy mode adapted it; an option equal
            to this or to `saved` is no change.

    Returns:
        `saved` with the free options and the epoch total of `requested`.

    Raises:
        FitConfigError: another option differs, naming each with its requested and saved
            values, or the new epoch total is not above the epochs done.
    """
    ignore = RESUMABLE_CHANGES | {"epochs"}
    changed = requested.differences(saved, ignore)
    if original is not None:
        changed = [k for k in changed if k in requested.differences(original, ignore)]
    if changed:
        now, then = _comparable(requested), _comparable(saved)
        asked = _and([f"{_flag(k)} {_shown(now[k])}" for k in changed])
        had = _and([_shown(then[k]) for k in changed])
        verb = "differs" if len(changed) == 1 else "differ"
        raise FitConfigError(f"{asked} {verb} from the run in {where} ({had}): resume with the "
                             "same options, or start a new run with --out elsewhere.")
    if requested.epochs != saved.epochs and requested.epochs <= epochs_done:
        raise FitConfigError(f"--epochs {requested.epochs} is not more than the {epochs_done} "
                             f"epochs the run in {where} has done: give more epochs to continue "
                             "it, or start a new run with --out elsewhere.")
    return saved.replace(epochs=requested.epochs,
                         **{k: getattr(requested, k) for k in RESUMABLE_CHANGES})


def resume_request(saved: FitConfig, given: dict, out: str) -> FitConfig:
    """`saved` with the options a user gave (`given`: FitConfig field -> value, as JSON or
    flags hold them) and the run's folder `out`: what resumed_config then checks."""
    return FitConfig.from_dict({**saved.to_dict(), **given, "out": str(out)})


def easy_config(out: str, **data_options) -> FitConfig:
    """The paper's BP-2D-03 recipe (U-Net, ResNet-18, 2D, 256 px, 4 patches per tile, Z-score,
    augmentation, 25 epochs, batch 64, LR 1e-3, Adam, cosine, Jaccard), ImageNet init when
    available. `data_options` sets data, pairs, val_scans, train_fraction, seed, ..."""
    base = FitConfig(out=out, easy=True)
    return base.replace(**data_options)
