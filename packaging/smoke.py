"""Smoke test of a built bundle: the bundle alone, from a folder whose path has a space.

    python packaging/smoke.py [BUNDLE]          # BUNDLE: dist/bone_apps (default)
    python packaging/smoke.py --installed       # the launchers next to this Python instead

The bundle is copied to "<temp>/bone apps smoke/bone_apps" and run there with a clean environment
(on Linux and macOS only HOME and PATH=/usr/bin:/bin; a fresh HOME), from a folder outside the
checkout. Steps: `bone --version`; `bone synth` -> `bone fit` (1 epoch, tiny, CPU) -> `bone predict`
-> `bone iou`; then each window (bone-dlfit, bone-dlpred, bone-iou) starts offscreen, stays up a
few seconds (BONE_APPS_QUIT_AFTER) and closes cleanly. One line per step; exit 1 on any failure.
Needs only Python's standard library, so any Python runs it, on every OS.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOWS = ("bone-dlfit", "bone-dlpred", "bone-iou")
STEPS = ("version", "synth", "fit", "predict", "iou", "windows")
FIT = ["--patch", "32", "--batch", "4", "--epochs", "1", "--init", "random", "--device", "cpu"]


def executable(folder: Path, name: str) -> Path:
    """The program `name` in `folder` (name.exe on Windows)."""
    return folder / (f"{name}.exe" if os.name == "nt" else name)


def clean_env(home: Path) -> dict[str, str]:
    """A clean environment: no venv, no PYTHONPATH, a fresh home; what the OS itself needs."""
    if os.name == "nt":
        keep = ("SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "NUMBER_OF_PROCESSORS",
                "PROCESSOR_ARCHITECTURE")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        system = os.environ.get("SYSTEMROOT", r"C:\Windows")
        env.update(PATH=f"{system}\\System32;{system}", USERPROFILE=str(home),
                   APPDATA=str(home / "AppData" / "Roaming"),
                   LOCALAPPDATA=str(home / "AppData" / "Local"), TEMP=str(home / "Temp"),
                   TMP=str(home / "Temp"))
        (home / "Temp").mkdir(parents=True, exist_ok=True)
        return env
    return {"HOME": str(home), "PATH": "/usr/bin:/bin"}


class Smoke:
    """Runs the steps in one folder and prints one line for each."""

    def __init__(self, programs: Path, work: Path, env: dict[str, str], timeout: float) -> None:
        self.programs = programs
        self.work = work
        self.env = env
        self.timeout = timeout
        self.failed = 0
        self.done = 0

    def run(self, step: str, name: str, *args: str, env: dict[str, str] | None = None,
            check=None) -> subprocess.CompletedProcess | None:
        """Run one program; print `ok` or `FAIL` with its reason; the result when it ran."""
        command = [str(executable(self.programs, name)), *args]
        self.done += 1
        started = time.monotonic()
        try:
            result = subprocess.run(command, cwd=self.work, env=env or self.env, capture_output=True,
                                    text=True, errors="replace", timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._report(step, started, f"{type(exc).__name__}: {exc}")
        problem = None
        if result.returncode != 0:
            problem = f"exit code {result.returncode}"
        elif "Traceback (most recent call last)" in result.stderr:
            problem = "a traceback on stderr"
        elif check is not None:
            problem = check(result)
        if problem is not None:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-8:]
            return self._report(step, started, problem, tail)
        self._report(step, started, None)
        return result

    def _report(self, step, started, problem, tail=()) -> None:
        seconds = time.monotonic() - started
        if problem is None:
            print(f"ok    {step} ({seconds:.1f} s)", flush=True)
            return None
        self.failed += 1
        print(f"FAIL  {step} ({seconds:.1f} s): {problem}", flush=True)
        for line in tail:
            print(f"        {line}", flush=True)
        return None


def version_check(result: subprocess.CompletedProcess) -> str | None:
    if re.search(r"bone_apps \d+\.\d+", result.stdout + result.stderr) is None:
        return f"printed {result.stdout.strip()!r}, not 'bone_apps <version>'"
    return None


def exists_check(path: Path):
    def check(_result) -> str | None:
        return None if path.exists() else f"{path} was not written"
    return check


def run_steps(smoke: Smoke, steps: list[str], window_seconds: float) -> None:
    """Run the chosen steps in order (a step whose input is missing fails, not the script)."""
    data, run, labels = smoke.work / "data", smoke.work / "run", smoke.work / "labels"
    if "version" in steps:
        smoke.run("bone --version", "bone", "--version", check=version_check)
    if "synth" in steps:
        smoke.run("bone synth", "bone", "synth", str(data), "--scans", "2", "--shape", "8", "64", "64",
                  check=exists_check(data / "scans" / "bone_01"))
    if "fit" in steps:
        smoke.run("bone fit", "bone", "fit", "--data", str(data), "--out", str(run), *FIT,
                  check=exists_check(run / "model.pth"))
    if "predict" in steps:
        smoke.run("bone predict", "bone", "predict", str(data / "scans" / "bone_00"),
                  "--weights", str(run / "model.pth"), "--out", str(labels), "--device", "cpu",
                  check=exists_check(labels))
    if "iou" in steps:
        smoke.run("bone iou", "bone", "iou", str(data / "masks" / "bone_00"), str(labels),
                  "--device", "cpu", check=lambda r: None if "IoU" in r.stdout + r.stderr
                  else "printed no IoU")
    if "windows" in steps:
        env = dict(smoke.env, QT_QPA_PLATFORM="offscreen", BONE_APPS_QUIT_AFTER=str(window_seconds))
        for name in WINDOWS:
            started = time.monotonic()
            smoke.run(f"{name} (offscreen, {window_seconds:g} s)", name, env=env,
                      check=lambda _r, s=started: None if time.monotonic() - s >= window_seconds
                      else "it ended before its window had been up")


def installed_programs() -> Path:
    """The folder of this Python's launchers (bin/ or Scripts/ of its environment)."""
    folder = Path(sys.executable).parent
    if not executable(folder, "bone").exists():
        scripts = Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin")
        folder = scripts
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=ROOT / "dist" / "bone_apps",
                        help="the bundle folder (default dist/bone_apps)")
    parser.add_argument("--installed", action="store_true",
                        help="run the launchers installed next to this Python, not a bundle")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated steps to run (default all: {','.join(STEPS)})")
    parser.add_argument("--window-seconds", type=float, default=3.0,
                        help="how long each window stays up (default 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per step (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)}: choose from {', '.join(STEPS)}")

    top = Path(tempfile.mkdtemp(prefix="bone_apps-smoke-")) / "bone apps smoke"
    top.mkdir()
    try:
        if args.installed:
            programs = installed_programs()
        else:
            if not executable(args.bundle, "bone").is_file():
                print(f"FAIL  no bundle: {executable(args.bundle, 'bone')} does not exist "
                      "(build it with bash packaging/build.sh)")
                return 1
            started = time.monotonic()
            programs = top / "bone_apps"
            shutil.copytree(args.bundle, programs, symlinks=True)
            print(f"ok    copy the bundle to {programs} ({time.monotonic() - started:.1f} s)", flush=True)
        home, work = top / "home", top / "work"
        home.mkdir()
        work.mkdir()
        smoke = Smoke(programs, work, clean_env(home), args.timeout)
        run_steps(smoke, steps, args.window_seconds)
        print(f"{'FAILED' if smoke.failed else 'passed'}: {smoke.done} checks from {programs}"
              + (f", {smoke.failed} failures" if smoke.failed else ""), flush=True)
        return 1 if smoke.failed else 0
    finally:
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
