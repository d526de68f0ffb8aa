"""`bone fit`: fit a segmentation model on scan/mask pairs (DLFit on the command line)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

from bone_apps.cli.options import add_option

# Options that describe the model or its fitting; when none is given (flag or config file),
# Easy mode applies the paper's BP-2D-03 recipe and adapts it to the data.
_MODEL_OPTIONS = (
    "dims", "context", "patch", "patch_depth", "patches_per_tile", "max_overlap", "augment",
    "augmentation", "norm", "arch", "encoder", "loss", "optimizer", "lr", "weight_decay",
    "scheduler", "restart_epochs", "epochs", "batch",
)
_AUG_FLAGS = {"aug_hflip": "p_hflip", "aug_vflip": "p_vflip", "aug_rotate": "p_rotate",
              "aug_brightness": "p_brightness", "aug_contrast": "p_contrast"}


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a segmentation model on scan/mask pairs",
        description="Fit a 2D, 2.5D or 3D segmentation model on scan/mask pairs and write "
                    "OUT/model.pth with its logs. With no model options this is Easy mode: the "
                    "paper's BP-2D-03 recipe (U-Net, ResNet-18, 256 px, batch 64, 25 epochs), "
                    "shrunk to fit small data. Under torchrun it fits with DDP.",
        argument_default=None)
    add_fit_options(parser)
    parser.set_defaults(func=run, command="fit")


class _Group:
    """An argument group that leaves out the options whose destination is in `leave_out`."""

    def __init__(self, group: argparse._ArgumentGroup, leave_out: Collection[str]) -> None:
        self.group = group
        self.leave_out = leave_out

    def add_argument(self, *flags: str, **kwargs) -> None:
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if dest not in self.leave_out:
            self.group.add_argument(*flags, **kwargs)


def add_fit_options(parser: argparse.ArgumentParser, leave_out: Collection[str] = ()) -> None:
    """Add the options of `bone fit` to `parser`, in its groups, except those whose destination
    is in `leave_out` (`bone cv` and `bone bench` take the fit options, less a few of their own).
    Options left out read as not given in build_config. Each FitConfig option comes from its
    field's metadata (bone_apps.core.options); the rest steer the command itself."""
    from bone_apps.core.fit.config import RESUMABLE_CHANGES, FitConfig
    from bone_apps.core.options import described

    described_fit = described(FitConfig)

    def group(title: str) -> _Group:
        return _Group(parser.add_argument_group(title), leave_out)

    def add(where: _Group, *names: str) -> None:
        for name in names:
            form = _CLI_FORM.get(name, {})
            if form.get("dest", name) not in where.leave_out:
                add_option(where.group, FitConfig, name, **form)

    data = group("data")
    add(data, "data", "pairs")
    data.add_argument("--config", type=Path, metavar="FILE.json",
                      help="options from a JSON file (as written to OUT/config.json); flags win")
    add(data, "level", "val_scans", "train_fraction", "class_names", "seed", "cache_dir",
        "stats_workers")

    out = group("output")
    add(out, "out")
    free = [meta.flag for name, meta in described_fit.items() if name in RESUMABLE_CHANGES and name != "out"]
    out.add_argument("--resume", type=Path, metavar="DIR",
                     help=f"continue the run in DIR with its options; only {', '.join(free[:-1])} "
                          f"and {free[-1]} may differ, and --epochs may name a new total above the "
                          "epochs done (the cosine schedule is then planned over the new total, "
                          "going on from the epoch reached)")
    out.add_argument("--overwrite", action="store_true", default=False,
                     help="replace an earlier run in --out")

    model = group("model")
    add(model, "easy")
    model.add_argument("--list-models", action="store_true", default=False,
                       help="print the architectures and encoders, then exit")
    add(model, "dims", "context", "patch", "patch_depth", "patches_per_tile", "max_overlap", "augment")
    for flag, what in (("hflip", "horizontal flip"), ("vflip", "vertical flip"),
                       ("rotate", "rotation by 90/180/270"), ("brightness", "brightness shift"),
                       ("contrast", "contrast scale")):
        model.add_argument(f"--aug-{flag}", type=float, metavar="P", help=f"probability of {what}")
    add(model, "norm", "arch", "encoder", "init")

    fitting = group("fitting")
    add(fitting, "loss", "optimizer", "lr", "weight_decay", "scheduler", "restart_epochs", "epochs",
        "batch", "val_slices", "device", "precision", "workers", "reproducible", "profile")


# How some FitConfig options read on the command line, beyond their metadata: folders as paths,
# names as one comma-separated word, repeated pairs, and flags that are not given unless given.
_CLI_FORM: dict[str, dict] = {
    "data": {"type": Path}, "out": {"type": Path}, "cache_dir": {"type": Path},
    "pairs": {"dest": "pair", "action": "append"}, "class_names": {"type": _names},
    "easy": {"default": False}, "augment": {"default": None}, "reproducible": {"default": None},
    "profile": {"default": None},
}


def list_models_text() -> str:
    from bone_apps.core.model.models import list_architectures, list_encoders

    return ("architectures (2D/2.5D): " + ", ".join(a for a in list_architectures()
                                                    if a != "BasicUNet")
            + "\narchitectures (3D): BasicUNet\n"
            + "encoders (2D/2.5D): " + ", ".join(list_encoders("2d"))
            + "\n  (and any timm encoder as tu-<name>)\n"
            + "encoders (3D, widths of BasicUNet): " + ", ".join(list_encoders("3d")))


def build_config(args: argparse.Namespace):
    """FitConfig from defaults, then --config, then flags; Easy mode when no model option."""
    from bone_apps.core.errors import FitConfigError
    from bone_apps.core.fit.config import FitConfig

    values, given, from_file = _options(args)
    if not values.get("out"):
        raise FitConfigError("no output folder: give --out DIR.")
    model_given = any(k in given or k in from_file for k in _MODEL_OPTIONS)
    values["easy"] = bool(getattr(args, "easy", False) or values.get("easy", False) or not model_given)
    if isinstance(values.get("init"), str) and values["init"].lower().endswith((".pth", ".pt")):
        _adopt_model_from_weights(values, given, from_file)
    return FitConfig.from_dict(values)


def resume_config(args: argparse.Namespace):
    """The run in --resume DIR with the options given now (--config and flags): only those
    count, and the engine refuses any that may not change (fitconfig.resumed_config)."""
    from bone_apps.core.errors import FitConfigError
    from bone_apps.core.fit.config import FitConfig, resume_request

    run = Path(args.resume).expanduser()
    config_file = run / "config.json"
    if not config_file.is_file():
        raise FitConfigError(f"{args.resume} holds no run to resume (no config.json): check "
                             "the folder.")
    if args.overwrite:
        raise FitConfigError("--resume continues the run and --overwrite replaces it: give one "
                             "of them.")
    if args.out is not None and Path(args.out).expanduser().resolve() != run.resolve():
        raise FitConfigError(f"--out {args.out} is not the folder being resumed ({args.resume}): "
                             "a resumed run stays in its folder, so leave --out out.")
    saved = FitConfig.load(config_file)
    values, _, _ = _options(args, saved.augmentation.to_dict())
    values.pop("out", None)
    if args.easy:
        values["easy"] = True
    return resume_request(saved, values, str(args.resume))


def _options(args: argparse.Namespace, augmentation: dict | None = None) -> tuple[dict, dict, set]:
    """Options from --config, overridden by the flags given: (all values, values given as
    flags, names from the file). Flags left out are not in either. --aug-* flags change the
    file's augmentation, else `augmentation`, else the defaults."""
    from bone_apps.core.data.augment import AugmentConfig
    from bone_apps.core.fit.config import FitConfig

    values: dict = {}
    if getattr(args, "config", None) is not None:
        values = FitConfig.load(args.config).to_dict()
    from_file = set(values)
    from bone_apps.core.options import described

    fields = [name for name in described(FitConfig) if name not in ("pairs", "easy")]
    # Options a command left out (add_fit_options) are not given.
    flags = {name: getattr(args, name, None) for name in fields}
    given = {k: v for k, v in flags.items() if v is not None}
    for key in ("data", "cache_dir", "out"):
        if key in given:
            given[key] = str(given[key])
    if getattr(args, "pair", None):
        given["pairs"] = [tuple(str(p) for p in pair) for pair in args.pair]
    aug_changes = {field: getattr(args, flag, None) for flag, field in _AUG_FLAGS.items()
                   if getattr(args, flag, None) is not None}
    if aug_changes:
        base = values.get("augmentation") or augmentation or AugmentConfig().to_dict()
        given["augmentation"] = {**base, **aug_changes}
    values.update(given)
    return values, given, from_file


def _adopt_model_from_weights(values: dict, given: dict, from_file: set) -> None:
    """Transfer learning: take dims, architecture, encoder and context from the weights file
    unless they were given."""
    from bone_apps.core.model.weights import load_weights

    _, meta = load_weights(Path(values["init"]))
    for key, meta_key in (("dims", "dims"), ("arch", "arch"), ("encoder", "encoder")):
        if key not in given and key not in from_file:
            values[key] = meta[meta_key]
    if meta["dims"] == "2.5d" and "context" not in given and "context" not in from_file:
        values["context"] = meta["context"]


def _install_stop_handler(stop, signum: int | None = None):
    """First Ctrl-C (or SIGTERM with `signum`): stop at the next safe point, as the Stop button
    does; a second one interrupts at once. Returns the previous handler (None off the main
    thread, where signals cannot be handled)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    signum = signal.SIGINT if signum is None else signum
    owner = os.getpid()

    def handler(received, frame):
        if os.getpid() != owner:  # a forked loader worker: the main process ends it
            return
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signal = received  # which one asked, for the exit code
        stop.set()
        if received == signal.SIGINT:  # someone at the keyboard: say a second one aborts
            print("\nstopping at the next safe point (Ctrl-C again to abort without saving)...",
                  file=sys.stderr)

    return signal.signal(signum, handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """A stop event for a job that stops at safe points: the first Ctrl-C or SIGTERM sets it
    (its `signal` attribute says which, for the exit code), a second one interrupts at once.
    The previous handlers come back when the block ends."""
    import signal

    stop = threading.Event()
    previous = {signum: _install_stop_handler(stop, signum)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def run(args: argparse.Namespace) -> int:
    import signal

    from bone_apps.core.errors import Cancelled

    if args.list_models:
        print(list_models_text())
        return 0
    resume = args.resume is not None
    config = resume_config(args) if resume else build_config(args)

    from bone_apps.core.fit.loop import fit

    rank = int(os.environ.get("RANK", "0"))
    console = FitConsole(enabled=rank == 0)
    with stop_on_signals() as stop:
        try:
            result = None
            for event in fit(config, resume=resume, overwrite=args.overwrite, stop=stop):
                result = console.show(event) or result
        except Cancelled as exc:  # stopped during the data checks: nothing to continue
            if not stop.is_set():
                raise
            from bone_apps.cli import end_worker_processes

            end_worker_processes()
            if rank == 0:
                print(f"bone fit: {exc}", file=sys.stderr)
            return 128 + int(getattr(stop, "signal", signal.SIGINT))
        finally:
            console.close()
    if result is None:
        return 1
    if result.status == "stopped":
        if rank == 0:
            print(f"bone fit: stopped; the checkpoint is saved. Continue with: "
                  f"{result.resume_hint}", file=sys.stderr)
        return 128 + int(getattr(stop, "signal", signal.SIGINT))
    return 0


class FitConsole:
    """Prints the engine's records: messages, a progress bar per phase, one line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.bar_key = None
        self.stats_bar = None

    def close(self) -> None:
        for bar in (self.bar, self.stats_bar):
            if bar is not None:
                bar.close()
        self.bar = self.stats_bar = None

    def show(self, event):
        from tqdm import tqdm

        from bone_apps.core.data.normalize import StatsProgress
        from bone_apps.core.fit.records import EpochEnd, FitFinished, FitMessage, StepProgress

        if isinstance(event, FitFinished):
            self.close()
            result = event.result
            if self.enabled and result.status == "completed":
                best = result.best_val_iou
                print(f"best validation IoU {best:.4f} at epoch {result.best_epoch}; weights: "
                      f"{result.model_path}" if best is not None else "no validation IoU")
            return result
        if not self.enabled:
            return None
        if isinstance(event, StatsProgress):
            if self.stats_bar is None:
                self.stats_bar = tqdm(total=event.total, desc="statistics", unit="volume",
                                      file=sys.stderr, disable=None, leave=False)
            self.stats_bar.n = event.done
            self.stats_bar.refresh()
        elif isinstance(event, FitMessage):
            if self.stats_bar is not None:
                self.stats_bar.close()
                self.stats_bar = None
            prefix = "note: " if event.level == "note" else ""
            print(prefix + event.text)
        elif isinstance(event, StepProgress):
            key = (event.epoch, event.phase)
            if key != self.bar_key:
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}/{event.epochs} "
                                f"{event.phase}", unit="batch", file=sys.stderr, disable=None,
                                leave=False, initial=event.step - 1)
                self.bar_key = key
            self.bar.update(1)
            if event.loss is not None:
                self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        elif isinstance(event, EpochEnd):
            if self.bar is not None:
                self.bar.close()
                self.bar, self.bar_key = None, None
            classes = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -"
                                for k, v in event.val_iou_per_class.items())
            print(f"epoch {event.epoch}/{event.epochs}: loss {event.train_loss:.4f}/"
                  f"{event.val_loss:.4f}, IoU {event.train_iou:.4f}/{event.val_iou:.4f} "
                  f"(train/val; {classes}), lr {event.lr:.2g}, {event.epoch_seconds:.1f} s"
                  + (", saved" if event.improved else ""))
        return None
