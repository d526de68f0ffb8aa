"""Real users' dead ends: resuming with other options, sizes that cannot work, Ctrl-C and
SIGTERM, library warnings, and refused runs that must not block the next one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bone_apps.cli import main
from bone_apps.core.errors import FitConfigError
from bone_apps.core.fit.config import FitConfig, resume_request, resumed_config

REPO = Path(__file__).resolve().parent.parent
TINY = ["--patch", "32", "--batch", "8", "--init", "random", "--workers", "0", "--device", "cpu",
        "--no-profile"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(sample_root: Path, ids=("bone_00", "bone_01")) -> list[str]:
    args = []
    for i in ids:
        args += ["--pair", str(sample_root / "scans" / i), str(sample_root / "masks" / i)]
    return args


def _one_line(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, err
    return err


def _finished(folder: Path) -> set[str]:
    """Outputs written to the end (not the hidden ones still being written)."""
    return {n for n in os.listdir(folder) if not n.startswith(".")} if folder.is_dir() else set()


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "log.csv").open()))


# ----------------------------------------------------------------------------------------------
# Resume with changed options


def test_resume_rule_of_the_one_list():
    saved = FitConfig(out="a", data="root", patch=32, epochs=4, dims="2d")
    same = resumed_config(saved, saved.replace(out="b", device="cpu", workers=0), 2, "a")
    assert same.device == "cpu" and same.workers == 0 and same.patch == 32 and same.out == "b"
    assert resumed_config(saved, saved.replace(epochs=9), 4, "a").epochs == 9
    # Options that act in neither run (context outside 2.5D) and paths written another way
    # are no change.
    assert resumed_config(saved, saved.replace(context=5, data=os.path.abspath("root")), 2, "a")
    with pytest.raises(FitConfigError, match=r"^--patch 64 differs from the run in a \(32\)"):
        resumed_config(saved, saved.replace(patch=64), 2, "a")
    with pytest.raises(FitConfigError, match=r"--patch 64 and --lr 0.1 differ .*\(32 and 0.001\)"):
        resumed_config(saved, saved.replace(patch=64, lr=0.1), 2, "a")
    with pytest.raises(FitConfigError, match="--epochs 2 is not more than the 3 epochs"):
        resumed_config(saved, saved.replace(epochs=2), 3, "a")
    # Easy mode shrank the patch: asking again for what was asked first is no change.
    asked = saved.replace(patch=256, easy=True)
    fitted = asked.replace(patch=64)
    assert resumed_config(fitted, asked, 1, "a", original=asked).patch == 64
    # What the windows and the CLI build from the options a user gave.
    request = resume_request(saved, {"epochs": 6, "augmentation": {"p_hflip": 0.1}}, "a")
    with pytest.raises(FitConfigError, match=r"--aug-hflip 0.1 differs"):
        resumed_config(saved, request, 2, "a")


def test_dlfit_resume_uses_the_same_rule(qtbot, tmp_path):
    pytest.importorskip("PySide6")
    from bone_apps.dlfit.tips import plain_options
    from bone_apps.dlfit.window import DLFitWindow
    from bone_apps.ui.settings import AppSettings

    out = tmp_path / "run"
    out.mkdir()
    saved = FitConfig(out=str(out), data=str(tmp_path), patch=32, epochs=3, batch=4)
    saved.save(out / "config.json")
    window = DLFitWindow(AppSettings(f"dlfit-dead-ends-{os.getpid()}"))
    qtbot.addWidget(window)
    window.advanced.set_config(saved)
    window.set_mode(advanced=True)
    window.advanced.w["device"].setCurrentIndex(window.advanced.w["device"].findData("cpu"))
    window.easy_epochs.setValue(5)
    config = window.resume_config(out)
    assert config.epochs == 5 and config.device == "cpu" and config.patch == 32
    window.advanced.w["patch"].setValue(64)
    with pytest.raises(FitConfigError, match="--patch 64 differs") as info:
        window.resume_config(out)
    assert "Patch size" in plain_options(info.value)


def test_cli_resume_takes_more_epochs_and_refuses_other_changes(sample_root, cache, tmp_path,
                                                                capsys):
    out = tmp_path / "run"
    assert main(["fit", *_pairs(sample_root), "--out", str(out), "--epochs", "1",
                 "--cache-dir", str(cache), *TINY]) == 0
    checkpoint = (out / "checkpoint.pth").read_bytes()
    capsys.readouterr()

    for argv, texts in (
            (["--patch", "64"], ["--patch 64 differs from the run in", "(32)", "--out elsewhere"]),
            (["--epochs", "1", "--lr", "0.1"], ["--lr 0.1 differs", "(0.001)"]),
            (["--no-augment"], ["--augment off differs", "(on)"]),
            (["--aug-hflip", "0.3"], ["--aug-hflip 0.3 differs from the run in"]),
            (["--overwrite"], ["give one of them"]),
            (["--out", str(tmp_path / "elsewhere")], ["stays in its folder"])):
        assert main(["fit", "--resume", str(out), *argv]) == 2, argv
        _one_line(capsys, *texts)
    assert (out / "checkpoint.pth").read_bytes() == checkpoint  # nothing was touched
    assert not (tmp_path / "elsewhere").exists()

    # More epochs: the run goes on, and the cosine is planned over the new total.
    assert main(["fit", "--resume", str(out), "--epochs", "2", "--workers", "0",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "now 2 epochs in all (was 1)" in printed and "epoch 2/2:" in printed
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert float(rows[1]["lr"]) == pytest.approx(0.5e-3)  # cos over 2 epochs, at epoch 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["epochs_done"] == 2
    assert summary["status"] == "completed"
    assert FitConfig.load(out / "config.json").epochs == 2  # the next resume compares with it

    # Fewer epochs than done is refused; the same total has nothing left to do.
    assert main(["fit", "--resume", str(out), "--epochs", "1"]) == 2
    _one_line(capsys, "--epochs 1 is not more than the 2 epochs")
    assert main(["fit", "--resume", str(out), "--epochs", "2", "--workers", "0"]) == 0
    assert len(_rows(out)) == 2


# ----------------------------------------------------------------------------------------------
# Sizes that cannot work


def test_sizes_that_cannot_work_are_refused_before_any_work(sample_root, cache, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["fit", *_pairs(sample_root), "--out", str(out), "--epochs", "1",
            "--cache-dir", str(cache), "--init", "random", "--workers", "0", "--device", "cpu"]
    assert main([*base, "--patch", "256", "--batch", "4"]) == 2
    _one_line(capsys, "--patch 256 is more than twice the smallest slice (64x64 px",
              "use --patch 128 or less (a multiple of 32)")
    assert not out.exists()
    assert main([*base, "--patch", "32", "--batch", "100000000"]) == 2
    err = _one_line(capsys, "--batch 100000000 needs about", "GB is available: use --batch ")
    largest = int(err.split("use --batch ")[1].split()[0])
    assert 1 <= largest < 100_000_000
    assert not out.exists()
    assert main([*base, "--dims", "3d", "--arch", "BasicUNet", "--encoder", "tiny", "--patch",
                 "32", "--patch-depth", "48", "--batch", "2"]) == 2
    _one_line(capsys, "--patch-depth 48 is more than twice the thinnest scan (16 slices",
              "--patch-depth 32 or less")
    assert not out.exists()
    assert main([*base, "--dims", "3d", "--arch", "BasicUNet", "--encoder", "tiny", "--patch",
                 "16", "--patch-depth", "16", "--batch", "2"]) == 2
    _one_line(capsys, "16x16x16 patch shrinks to a single voxel", "--patch 32")
    assert not out.exists()


@pytest.mark.parametrize("shape, text", [
    (["100000", "100000", "100000"], "GB of memory to make each scan"),
    (["0", "64", "64"], "three sizes of at least 1"),
    (["-4", "64", "64"], "three sizes of at least 1"),
    (["1000000", "8", "8"], "the longest that works is --shape 32767 8 8"),
])
def test_synth_refuses_shapes_that_cannot_be_made(shape, text, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", str(out), "--scans", "2", "--shape", *shape]) == 2
    err = _one_line(capsys, text)
    if "memory" in text:  # names a shape that fits, and it does
        largest = [int(n) for n in err.rstrip(".\n").split("--shape ")[-1].split()]
        from bone_apps.core.data.synthetic import check_sample_request

        check_sample_request(out, 1, largest)
    assert not out.exists()


def test_synth_refuses_more_scans_than_the_disk_holds(tmp_path, capsys, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    assert main(["synth", str(tmp_path / "d"), "--scans", "100", "--shape", "16", "64", "64"]) == 2
    per_scan = 3 * 16 * 64 * 64 + 2048 * 16  # 16-bit scan, 8-bit mask, slice headers
    _one_line(capsys, "GB of disk for 100 scans", f"use --scans {10 * 2**20 // per_scan} or fewer")
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# SIGTERM, warnings


def test_sigterm_stops_a_fit_cleanly_and_it_resumes(sample_root, cache, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bone_apps", "fit", *_pairs(sample_root), "--out", str(out),
               "--epochs", "50", "--val-slices", "-1", "--cache-dir", str(cache), *TINY]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/50:"):
                break
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert took < 5, took
    assert err.count("\n") == 1 and "Traceback" not in err and "Warning" not in err, err
    assert err.startswith("bone fit: stopped; the checkpoint is saved") and str(out) in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and 1 <= summary["epochs_done"] < 50
    done = summary["epochs_done"]
    assert main(["fit", "--resume", str(out), "--epochs", str(done + 1), "--workers", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert len(_rows(out)) == done + 1


def test_sigterm_ends_other_commands_with_one_line_and_no_half_files(tmp_path):
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bone_apps", "synth", str(out), "--scans", "40", "--shape", "32",
         "256", "256"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _finished(out / "masks"):  # stop once a scan and its mask are written
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM and err == "bone synth: stopped.\n", err
    assert took < 3, took
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]
    masks = _finished(out / "masks")
    assert masks and masks <= _finished(out / "scans")  # finished scans are kept


def test_library_warnings_stay_out_of_the_terminal(tmp_path):
    code = (
        "import types, warnings\n"
        "from bone_apps.core.fit.runfiles import quiet_library_warnings\n"
        "quiet_library_warnings()\n"
        "quiet_library_warnings()\n"
        "def module(name):\n"
        "    m = types.ModuleType(name)\n"
        "    exec('import warnings\\n'\n"
        "         'def own(): warnings.warn(\"library chatter\", UserWarning)\\n'\n"
        "         'def caller(): warnings.warn(\"deprecated\", FutureWarning, stacklevel=2)\\n',\n"
        "         m.__dict__)\n"
        "    return m\n"
        "for name in ('torch.nn.modules', 'monai.networks', 'tifffile', 'timm.layers',\n"
        "             'segmentation_models_pytorch.base'):\n"
        "    lib = module(name)\n"
        "    lib.own()\n"
        "    lib.caller()\n"
        "import logging\n"
        "logging.getLogger('tifffile').warning('odd tag')\n"
        "ours = module('bone_apps.core.example')\n"
        "ours.own()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "Warning" in line] == [
        line for line in lines if "UserWarning: library chatter" in line]
    assert len([line for line in lines if "Warning" in line]) == 1  # bone_apps' own one
    assert "odd tag" not in done.stderr and "deprecated" not in done.stderr


# ----------------------------------------------------------------------------------------------
# A refused run leaves nothing the next run rejects


def test_a_refused_fit_leaves_no_dead_end(sample_root, cache, tmp_path, capsys):
    import numpy as np

    from bone_apps.core.io.writer import write_volume

    bad = tmp_path / "bad_mask"
    write_volume(bad, np.zeros((16, 32, 32), np.uint8))
    scan = str(sample_root / "scans" / "bone_00")
    wrong = ["fit", "--pair", scan, str(bad), *_pairs(sample_root, ("bone_01",)),
             "--epochs", "1", "--cache-dir", str(cache), *TINY]
    for out in (tmp_path / "new" / "run", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert main([*wrong, "--out", str(out)]) == 2
        _one_line(capsys, "16x32x32")
        if out.name == "run":
            assert not (tmp_path / "new").exists()
        else:
            assert os.listdir(out) == []
        # --resume says plainly there is nothing to resume.
        assert main(["fit", "--resume", str(out)]) == 2
        _one_line(capsys, "holds no run to resume")
        # A rerun without --overwrite is accepted: it gets as far as its own checks.
        assert main(["fit", *_pairs(sample_root), "--out", str(out), "--epochs", "1",
                     "--cache-dir", str(cache), "--init", "random", "--workers", "0",
                     "--patch", "256", "--batch", "4"]) == 2
        _one_line(capsys, "--patch 256 is more than twice")
