"""Everything bone_apps writes goes through here: proof it is ours, the rules for replacing it,
one lock per output, atomic writes, and one-sentence messages for disk errors.

The rule that keeps users' data safe: an existing output is only ever replaced (with
overwrite) when bone_apps wrote it. Proof of that is

* a folder (label stack, fit run, sample dataset): a marker file `.bone_apps.json` inside it
  naming what wrote it, when, and the entries that belong to it;
* a multi-page TIFF: `"written_by": "bone_apps ..."` in its ImageDescription (JSON);
* a JSON file (reports, scores): a top-level `"written_by": "bone_apps ..."` key.

Anything else is refused, naming what is there. An empty folder holds nothing to lose.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from bone_apps import __version__
from bone_apps.core.errors import (
    BoneAppsError,
    ForeignFilesError,
    OutputExistsError,
    OutputLockedError,
    OutputWriteError,
)
from bone_apps.core.io import formats

MARKER = ".bone_apps.json"
WRITTEN_BY = f"bone_apps {__version__}"
_NAMES_SHOWN = 4
# Hidden helpers of ours next to or inside an output: temporaries, replaced outputs, locks.
_OURS_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?:partial|old|previous)-(?P<pid>\d+)$")


def is_written_by_us(value: object) -> bool:
    return isinstance(value, str) and value.startswith("bone_apps")


def stamp(kind: str, **extra) -> dict:
    """What a marker records: who wrote the output, when, and with which command."""
    return {"written_by": WRITTEN_BY, "kind": kind,
            "written_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(), "pid": os.getpid(), "command": _command(), **extra}


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("bone", "__main__.py"):
        argv[0] = "bone"
    return shlex.join(argv)[:500]


# ----------------------------------------------------------------------------------------------
# Disk errors in one sentence


_REASONS = {
    errno.ENOSPC: "the disk is full: free some space or choose another output",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another output",
    errno.EROFS: "the file system is read-only: choose a folder you can write to",
    errno.EACCES: "permission was denied: choose a folder you can write to",
    errno.EPERM: "permission was denied: choose a folder you can write to",
    errno.ENOENT: "its folder disappeared while it was being written: check the folder and run again",
    errno.ENOTDIR: "its folder disappeared while it was being written: check the folder and run again",
}
HANDLED_ERRNOS = frozenset(_REASONS)


def output_error(exc: OSError, path: str | os.PathLike) -> OutputWriteError:
    """The one-sentence error for an OSError met while writing `path`."""
    reason = _REASONS.get(exc.errno) or f"{exc.strerror or exc}: check the disk and the folder"
    return OutputWriteError(f"{path} could not be written because {reason}.")


def os_error_sentence(exc: OSError) -> str:
    """One sentence for an OSError that reached the command line without a path of ours."""
    return str(output_error(exc, exc.filename or "an output"))


# ----------------------------------------------------------------------------------------------
# Names


def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute without following links (so `.` has a name)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def partial_name(target: str | os.PathLike, pid: int | None = None) -> Path:
    """The hidden temporary sibling a new output is written to before it is renamed into place."""
    target = absolute(target)
    return target.with_name(f".{target.name}.partial-{os.getpid() if pid is None else pid}")


def lock_name(target: str | os.PathLike) -> Path:
    target = absolute(target)
    return target.with_name(f".{target.name}.lock")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")


# ----------------------------------------------------------------------------------------------
# Proof of ownership


def write_marker(folder: str | os.PathLike, kind: str, entries: Iterable[str] = (),
                 reproducible: bool = False) -> Path:
    """Mark `folder` as written by bone_apps; `entries` are the names that belong to it.

    reproducible: leave out when, where and by which command (the folder's time says when),
        so that rerunning gives a bitwise-identical output (label stacks).
    """
    data = stamp(kind, entries=sorted(set(entries)))
    if reproducible:
        data = {k: data[k] for k in ("written_by", "kind", "entries")}
    return write_atomic(Path(folder) / MARKER, json.dumps(data, indent=2) + "\n")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder bone_apps wrote, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and is_written_by_us(data.get("written_by")) else None


def tiff_is_ours(path: str | os.PathLike) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description
        return is_written_by_us(json.loads(description).get("written_by"))
    except Exception:  # noqa: BLE001 - unreadable or not our kind of TIFF: not ours
        return False


def json_is_ours(path: str | os.PathLike) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and is_written_by_us(data.get("written_by"))


def _volume_file_is_ours(path: Path) -> bool:
    """A NIfTI or HDF5 file carrying our written_by tag (formats/ reads it)."""
    return formats.form_of_name(path) in (formats.NIFTI, formats.HDF5) and formats.file_is_ours(path)


def foreign_entries(target: str | os.PathLike) -> list[str]:
    """Names at `target` that bone_apps did not write (none: it may be replaced).

    A file: its own name unless it carries our tag. A folder: every entry when it has no
    marker, else the entries its marker does not list (and that are not our hidden helpers).
    """
    target = absolute(target)
    if not os.path.lexists(target):
        return []
    if target.is_symlink() or not target.is_dir():
        ours = (not target.is_symlink()
                and ((formats.is_tiff_name(target) and tiff_is_ours(target))
                     or (target.suffix.lower() == ".json" and json_is_ours(target))
                     or _volume_file_is_ours(target)))
        return [] if ours else [target.name]
    names = sorted(os.listdir(target))
    marker = read_marker(target)
    if marker is None:
        return names
    allowed = {MARKER, *marker.get("entries", ())}

    def ours(name: str) -> bool:
        match = _OURS_HIDDEN.match(name)
        return name in allowed or bool(match and (match["name"] in allowed
                                                  or match["name"] == "bone_apps"))

    return [name for name in names if not ours(name)]


def check_replaceable(target: str | os.PathLike) -> None:
    """Refuse to replace `target` unless bone_apps wrote it."""
    foreign = foreign_entries(target)
    if not foreign:
        return
    target = Path(target)
    if target.is_dir() and not target.is_symlink():
        raise ForeignFilesError(f"{target} holds files bone_apps did not write ({_shown(foreign)}): "
                                "choose an empty or new folder.")
    raise ForeignFilesError(f"{target} was not written by bone_apps, so it is not replaced: "
                            "choose another name or move it away.")


def check_target(target: str | os.PathLike, overwrite: bool,
                 ours: Callable[[Path], bool] | None = None) -> None:
    """An output about to be written must be new, or (overwrite) something bone_apps wrote.

    `ours` recognises a file kind that cannot carry the `written_by` tag (e.g. a CSV by its
    header); without it the marker and tag rules of check_replaceable apply."""
    target = Path(target)
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise OutputExistsError(f"{target} already exists: choose another output or allow "
                                "overwriting (--overwrite).")
    if ours is None:
        check_replaceable(target)
    elif not ours(target):
        raise ForeignFilesError(f"{target} was not written by bone_apps, so it is not replaced: "
                                "choose another name or move it away.")


def check_targets(targets: Iterable[str | os.PathLike], overwrite: bool) -> None:
    for target in targets:
        check_target(target, overwrite)


# ----------------------------------------------------------------------------------------------
# Locks


class OutputLock:
    """One writer per output: a hidden `.NAME.lock` next to it, created with O_EXCL.

    It holds the pid, host and command of its owner; a lock left by a dead process of this
    host is taken over. Use as a context manager or call acquire()/release().
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = lock_name(target)
        self.held = False

    def acquire(self) -> OutputLock:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_stale():
                    continue
                raise self._locked_error() from None
            except OSError as exc:
                raise output_error(exc, self.target) from None
            try:
                os.write(fd, json.dumps(info).encode())
            except OSError as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise output_error(exc, self.target) from None
            os.close(fd)
            self.held = True
            return self
        raise self._locked_error()

    def _owner(self, path: Path | None = None) -> dict | None:
        try:
            data = json.loads((path or self.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _take_over_stale(self) -> bool:
        """Remove the lock if its owner is a dead process of this host; whether it was removed."""
        owner = self._owner()
        if not owner or owner.get("host") != socket.gethostname() or pid_alive(int(owner.get("pid", 0))):
            return False
        # Rename first, so two runs taking over the same stale lock cannot remove each other's.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        taken = self._owner(aside)
        if taken and taken.get("pid") == owner.get("pid"):
            aside.unlink(missing_ok=True)
            return True
        with contextlib.suppress(OSError):  # a live run's lock, renamed by mistake: put it back
            os.link(aside, self.path)
        aside.unlink(missing_ok=True)
        return False

    def _locked_error(self) -> OutputLockedError:
        owner = self._owner() or {}
        who = (f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
               + (f" ({owner['command']})" if owner.get("command") else "")
               + (f" since {owner['since']}" if owner.get("since") else ""))
        return OutputLockedError(
            f"{self.target} is being written by another bone_apps run, {who}: wait for it to "
            f"finish or choose another output (if that run is gone, delete {self.path}).")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._owner()
        if owner is None or owner.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Writing and removing


def remove(path: str | os.PathLike) -> None:
    """Remove a file or folder tree of ours, ignoring what is already gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


def _write_all(path: Path, data: bytes) -> None:
    """The low-level write of write_atomic (a separate function so tests can fake a full disk)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary sibling of `path` to write to: renamed over `path` when the block
    ends without an error, removed otherwise (the one atomic-write rule of the project)."""
    path = Path(path)
    tmp = partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a small file atomically (atomic_target).

    Raises:
        OutputWriteError: the disk is full, read-only, or the folder is gone (nothing is left).
    """
    path = Path(path)
    try:
        with atomic_target(path) as tmp:
            _write_all(tmp, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise output_error(exc, path) from None
    return path


def write_json_file(path: str | os.PathLike, data: dict, overwrite: bool = False) -> Path:
    """Write a JSON output (report, scores) atomically, tagged as ours.

    An existing file is replaced only with `overwrite` and only when bone_apps wrote it.
    """
    check_target(path, overwrite)
    return write_atomic(path, json.dumps({"written_by": WRITTEN_BY, **data}, indent=2) + "\n")


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove hidden leftovers of runs killed while writing `target` (their pid no longer alive).

    `.NAME.partial-PID` (an unfinished output) is removed; `.NAME.old-PID` (the previous output
    of a replacement killed half-way) is put back when `target` is missing, else removed.
    Call it while holding the target's lock. Returns what was removed.
    """
    target = absolute(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        match = _OURS_HIDDEN.match(path.name)
        if not match or match["name"] != target.name:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and pid_alive(pid):
            continue
        if path.name.startswith(f".{target.name}.old-") and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.replace(path, target)
                continue
        remove(path)
        removed.append(path)
    return removed


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """Create `folder` and missing parents; returns those created, deepest first."""
    folder = absolute(folder)
    missing = []
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for path in reversed(missing):
            path.mkdir()
    except FileExistsError:
        pass
    except OSError as exc:
        raise output_error(exc, folder) from None
    return missing


def remove_empty_dirs(folders: Iterable[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def claim_folder(folder: str | os.PathLike, kind: str, entries: Sequence[str],
                 overwrite: bool = False) -> Path:
    """Make `folder` a bone_apps output folder: new, empty, or one bone_apps wrote before.

    An existing folder holding other files is refused (whatever `overwrite` says): outputs
    of bone_apps never mix with the user's files.
    """
    folder = Path(folder).expanduser()
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file: choose a folder.")
    if read_marker(folder) is None:
        check_replaceable(folder)
        make_dirs(folder)
        write_marker(folder, kind, entries)
    return folder


__all__ = ["MARKER", "WRITTEN_BY", "BoneAppsError", "OutputLock", "check_replaceable",
           "check_target", "check_targets", "claim_folder", "clean_stale", "foreign_entries",
           "output_error", "partial_name", "read_marker", "write_atomic", "write_json_file",
           "write_marker"]
