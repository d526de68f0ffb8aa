"""The `bone` command end to end on sample scans: synth, iou, help, version, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bone_apps.cli import main
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume


def bone(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-m", "bone_apps", *args], capture_output=True,
                          text=True, env=env, timeout=120, **kwargs)


def test_help_and_version_work_without_a_display_and_start_fast():
    start = time.perf_counter()
    done = bone("--help")
    elapsed = time.perf_counter() - start
    assert done.returncode == 0
    for command in ("synth", "iou"):
        assert command in done.stdout
    assert elapsed < 5  # a regression to importing torch here would cost several seconds
    version = bone("--version")
    assert version.returncode == 0 and "bone_apps" in version.stdout


def test_help_does_not_import_torch_or_qt():
    code = ("import sys; from bone_apps.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_synth_writes_the_dataset_layout(tmp_path):
    done = bone("synth", str(tmp_path / "data"), "--scans", "3", "--shape", "8", "32", "40",
                "--seed", "5")
    assert done.returncode == 0, done.stderr
    for sid in ("bone_00", "bone_01", "bone_02"):
        scan = open_volume(tmp_path / "data" / "scans" / sid)
        mask = open_volume(tmp_path / "data" / "masks" / sid, role="mask")
        assert scan.shape == mask.shape == (8, 32, 40)
        assert set(np.unique(mask.read_slab(0, 8))) <= {0, 1, 2}
    again = bone("synth", str(tmp_path / "data"), "--scans", "1")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_iou_prints_table_and_writes_json(sample_root, tmp_path, capsys):
    ref = sample_root / "masks" / "bone_00"
    mask = open_volume(ref, role="mask").read_slab(0, 16)
    noisy = mask.copy()
    noisy[:, ::7, :] = 1  # a perturbed copy
    write_volume(tmp_path / "pred", noisy)
    code = main(["iou", str(ref), str(tmp_path / "pred"), "--class-names",
                 "background,bone,pores", "--json", str(tmp_path / "s.json"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "bone" in out and "pores" in out and "mean" in out
    data = json.loads((tmp_path / "s.json").read_text())
    assert 0 < data["mean_iou"] < 1
    assert [c["name"] for c in data["classes"]] == ["background", "bone", "pores"]
    assert f"{data['mean_iou']:.4f}" in out


@pytest.mark.parametrize("case", ["missing", "shape", "labels", "device"])
def test_iou_bad_input_is_one_line_and_nonzero(sample_root, tmp_path, case):
    ref = str(sample_root / "masks" / "bone_00")
    if case == "missing":
        args = ["iou", ref, str(tmp_path / "nothing")]
    elif case == "shape":
        write_volume(tmp_path / "small", np.zeros((3, 64, 64), np.uint8))
        args = ["iou", ref, str(tmp_path / "small")]
    elif case == "labels":
        args = ["iou", ref, ref, "--class-names", "background,bone"]
    else:
        args = ["iou", ref, ref, "--device", "quantum"]
    done = bone(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    expected = {"missing": "does not exist", "shape": "64x64", "labels": "label 2",
                "device": "invalid choice"}[case]
    assert last.startswith("bone iou") and expected in last
    if case != "device":  # argparse adds its usage line to a bad choice
        assert len(done.stderr.strip().splitlines()) == 1


def test_iou_reports_non_tiff_files_it_skipped(sample_root, tmp_path):
    import shutil

    ref = tmp_path / "ref"
    shutil.copytree(sample_root / "masks" / "bone_00", ref)
    (ref / "Thumbs.db").write_bytes(b"\0")
    (ref / "notes.txt").write_text("segmented by hand")
    done = bone("iou", str(ref), str(sample_root / "masks" / "bone_00"), "--device", "cpu")
    assert done.returncode == 0
    assert "2 file(s)" in done.stderr and "Thumbs.db" in done.stderr
    assert "1.0000" in done.stdout  # the skipped files changed nothing
