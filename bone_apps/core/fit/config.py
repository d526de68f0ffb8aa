"""FitConfig: every option of a fitting run, with the paper's defaults, as a frozen dataclass.

The CLI fills it from flags (and an optional JSON file), the desktop app from its widgets;
it is saved as config.json next to the outputs and embedded in the weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.choices import Choice, parse_choice
from bone_apps.core.data.augment import AugmentConfig
from bone_apps.core.data.normalize import NormMethod
from bone_apps.core.data.sampling import Dims
from bone_apps.core.errors import FitConfigError
from bone_apps.core.io.formats import LEVEL_HELP
from bone_apps.core.io.labels import check_class_names
from bone_apps.core.io.outputs import write_atomic
from bone_apps.core.jobs.devices import DEVICE_FORMS, parse_devices
from bone_apps.core.model.losses import LOSSES, OPTIMIZERS, SCHEDULERS
from bone_apps.core.options import described, names_options_of, not_an_option, option

INIT_CHOICES = ("random", "imagenet", "auto")


class Precision(Choice, what="precision", error=FitConfigError):
    """Number format of fitting: auto (mixed fp16 on CUDA, fp32 on the CPU), fp32, fp16, bf16."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"




# Options compared as paths: the same place written another way is no change.
_PATH_OPTIONS = frozenset({"data", "cache_dir", "out"})


@dataclass(frozen=True)
class FitConfig:
    """Options of one fitting run.

    Each field declares its help, label, flag and choices in its metadata (core/options.py);
    `bone fit`'s options and DLFit's form are made from them. What they do together: `data`
    (ROOT with scans/<id> and masks/<id>) and/or `pairs` give the scans; unless `val_scans`
    names validation scans, `train_fraction` of the whole scans (shuffled with `seed`) fit and
    the rest validate. `context` acts in 2.5D only, `patch_depth` in 3D only, `restart_epochs`
    with cosine-restarts only. `init` is random, imagenet, auto (ImageNet when it can be had)
    or the path of a weights file of this suite (transfer learning). After each epoch the
    central `val_slices` slices of every validation scan (0: all) are predicted whole, and that
    score picks the best epoch (-1: patches only). `easy` applies the paper's BP-2D-03 recipe
    adapted to small data: patches shrink to the smallest slice and the batch shrinks until an
    epoch holds core.fit.prepare.EASY_MIN_STEPS updates.
    """

    out: str = option(help="output folder", label="Output folder", metavar="DIR", resumable=True)
    data: str | None = option(None, help="dataset folder with ROOT/scans/<id> and ROOT/masks/<id>",
                              label="Add dataset root", metavar="ROOT")
    pairs: tuple[tuple[str, str], ...] = option(
        (), help="one scan and its mask (repeat for more)", label="Add pair", flag="--pair",
        metavar=("SCAN", "MASK"), nargs=2)
    level: int | None = option(None, help=LEVEL_HELP, label="Resolution level", metavar="N",
                               default_text="")
    val_scans: tuple[str, ...] = option((), help="validate on these scans", label="Validation column",
                                        metavar="ID", nargs="+")
    train_fraction: float = option(0.8, help="fraction of whole scans that fit; the rest validate",
                                   label="Training fraction", metavar="F")
    seed: int = option(42, help="random seed", label="Seed")
    reproducible: bool = option(False, help="deterministic algorithms: reruns give identical weights",
                                label="Reproducible")
    dims: Dims = option(Dims.D2, help="fitting mode", label="Mode", where="Fitting mode")
    context: int = option(1, help="2.5D: slices on each side", label="Context", metavar="K")
    patch: int = option(256, help="patch size in px", label="Patch size", metavar="PX")
    patch_depth: int = option(16, help="3D: patch depth in slices", label="Patch depth",
                              metavar="SLICES")
    patches_per_tile: int = option(4, help="random patches per tile", label="Patches per tile",
                                   metavar="N")
    max_overlap: float = option(0.5, help="max overlap of two patches", label="Maximum overlap",
                                metavar="F")
    augment: bool = option(True, help="no augmentation", label="Augment training patches",
                           flag="--no-augment")
    augmentation: AugmentConfig = not_an_option(
        default_factory=AugmentConfig, why="its chances are the --aug-* flags and the window's "
                                            "Augmentation group, one per AugmentConfig field")
    norm: NormMethod = option(NormMethod.ZSCORE, label="Normalization",
                              help="per-scan normalization (minmax uses 0.5-99.5 % percentiles)")
    arch: str = option("Unet", help="architecture; see --list-models", label="Architecture")
    encoder: str = option("resnet18", help="encoder; see --list-models", label="Encoder")
    init: str = option("auto", help="initial weights (auto: ImageNet when available, else random)",
                       label="Start from", where="Initial weights",
                       metavar="|".join((*INIT_CHOICES, "FILE.pth")), default_text="")
    class_names: tuple[str, ...] = option((), help="names of labels 0, 1, ...; declares the classes",
                                          label="Class names", metavar="A,B,C")
    loss: str = option("jaccard", help="loss function", label="Loss", choices=tuple(LOSSES))
    optimizer: str = option("adam", help="optimizer (sgd uses momentum 0.9)", label="Optimizer",
                            choices=tuple(OPTIMIZERS))
    lr: float = option(1e-3, help="learning rate", label="Learning rate")
    weight_decay: float | None = option(None, help="weight decay", label="Weight decay", metavar="WD",
                                        default_text="adamw 0.01, else 0")
    scheduler: str = option("cosine", help="learning-rate schedule, stepped each epoch (cosine: one "
                                           "cycle)", label="Scheduler", choices=SCHEDULERS)
    restart_epochs: int = option(5, help="cosine-restarts period", label="Epochs per restart",
                                 metavar="N")
    epochs: int = option(25, help="passes over the training tiles; with --resume, a larger total fits "
                                  "the extra epochs", label="Epochs", metavar="N")
    batch: int = option(64, help="patches per update", label="Batch size", metavar="N")
    val_slices: int = option(64, help="central slices of each validation scan predicted whole after "
                                      "each epoch, as prediction runs; that score picks the best "
                                      "epoch (0: all; -1: score patches only)",
                             label="Validation slices", metavar="N")
    device: str = option("auto", help="where fitting runs (several GPUs: DataParallel)", label="Device",
                         metavar="|".join(DEVICE_FORMS), resumable=True)
    precision: Precision = option(Precision.AUTO, help="auto: mixed fp16 on CUDA, fp32 on the CPU",
                                  label="Precision", default_text="")
    workers: int | None = option(None, help="data loader processes", label="Loader processes",
                                 metavar="N", default_text="one per core", resumable=True)
    stats_workers: int | None = option(None, help="processes computing statistics",
                                       label="Statistics processes", metavar="N", resumable=True)
    cache_dir: str | None = option(None, help="where per-scan statistics are cached",
                                   label="Statistics cache", metavar="DIR", resumable=True)
    profile: bool = option(True, help="skip counting FLOPs", label="Count FLOPs and parameters",
                           flag="--no-profile", resumable=True)
    easy: bool = option(False, help="Easy mode even when model options are given", label="Easy mode")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "dims", parse_choice(Dims, self.dims, "{dims}", FitConfigError, "dims"))
        set_(self, "norm", parse_choice(NormMethod, self.norm, "{norm}", FitConfigError, "norm"))
        set_(self, "precision", parse_choice(Precision, self.precision, "{precision}", FitConfigError,
                                             "precision"))
        if self.class_names:  # repeated or file-clashing names are refused before any work
            check_class_names(self.class_names, FitConfigError)

    # JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        data["val_scans"] = list(self.val_scans)
        data["class_names"] = list(self.class_names)
        data["augmentation"] = self.augmentation.to_dict()
        for key in ("dims", "norm", "precision"):
            data[key] = data[key].value
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

    def differences(self, other: FitConfig, ignore: frozenset[str] | None = None) -> list[str]:
        """Names of options that differ, leaving out `ignore` (default: RESUMABLE_CHANGES) and
        options that act in neither (e.g. context outside 2.5D). Augmentation chances are named
        one by one (p_hflip, ...); paths naming the same place are equal."""
        ignore = RESUMABLE_CHANGES if ignore is None else ignore
        a, b = _comparable(self), _comparable(other)
        inert = _inert(self) & _inert(other)
        return [k for k in a if k not in ignore and k not in inert and a[k] != b[k]]

    # Checks ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise FitConfigError for values that can never work (data-independent checks)."""
        from bone_apps.core.model.losses import check_names

        check_names(self.loss, self.optimizer, self.scheduler)
        if not self.data and not self.pairs:
            raise FitConfigError("no scans to fit: give {data} ROOT or {pairs} SCAN MASK.", "data")
        positive = {"patch": self.patch, "patches_per_tile": self.patches_per_tile,
                    "epochs": self.epochs, "batch": self.batch, "patch_depth": self.patch_depth,
                    "restart_epochs": self.restart_epochs}
        for name, value in positive.items():
            if int(value) < 1:
                raise FitConfigError(f"{{{name}}} must be at least 1 (got {value}).", name)
        if int(self.val_slices) < -1:
            raise FitConfigError("{val_slices} must be -1 (patches only), 0 (all) or more (got "
                                 f"{self.val_slices}).", "val_slices")
        if self.context < 0:
            raise FitConfigError(f"{{context}} must be 0 or more slices (got {self.context}).", "context")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise FitConfigError(f"{{max_overlap}} {self.max_overlap} must be a fraction between 0 "
                                 "and 1.", "max_overlap")
        if not self.lr > 0:
            raise FitConfigError(f"{{lr}} {self.lr} must be positive (e.g. 0.001).", "lr")
        if self.init not in INIT_CHOICES and not self.init.lower().endswith((".pth", ".pt")):
            raise FitConfigError(f"{{init}} {self.init!r} is unknown: use random, imagenet, auto or "
                                 "the path of a .pth weights file.", "init")
        if self.workers is not None and self.workers < 0:
            raise FitConfigError("{workers} must be 0 or more.", "workers")
        parse_devices(self.device, FitConfigError)


names_options_of(FitConfigError, FitConfig)
# Options that may change when a run is resumed because they do not change the numbers (their
# fields say `resumable`); `epochs` may change too, to a total above the epochs already done.
# The one rule `bone fit --resume`, the engine and DLFit's Resume use is resumed_config.
RESUMABLE_CHANGES = frozenset(name for name, meta in described(FitConfig).items() if meta.resumable)


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
    data.update(data.pop("augmentation"))
    return data


def _inert(config: FitConfig) -> set[str]:
    """Options that have no effect in `config` (their values need not match on resume)."""
    inert = set()
    if config.dims is not Dims.D25:
        inert.add("context")
    if config.dims is not Dims.D3:
        inert.add("patch_depth")
    if config.scheduler.strip().lower() != "cosine-restarts":
        inert.add("restart_epochs")
    if not config.augment:
        inert.update(config.augmentation.to_dict())
    if config.val_scans:
        inert.add("train_fraction")
    return inert


def _flag(name: str) -> str:
    """An option as a FitConfigError names it: {field} (shown as the flag or the window's label),
    an augmentation chance by its flag."""
    if name.startswith("p_") and name in AugmentConfig().to_dict():
        return f"--aug-{name[2:]}"
    return "{" + name + "}"


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
                             "same options, or start a new run with {out} elsewhere.", changed[0])
    if requested.epochs != saved.epochs and requested.epochs <= epochs_done:
        raise FitConfigError(f"{{epochs}} {requested.epochs} is not more than the {epochs_done} "
                             f"epochs the run in {where} has done: give more epochs to continue "
                             "it, or start a new run with {out} elsewhere.", "epochs")
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
