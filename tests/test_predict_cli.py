"""`bone predict` on the command line: report, errors, several scans, and torchrun on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_predict import make_weights

from bone_apps.cli import main
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume


@pytest.fixture(scope="module")
def weights_2d(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "model.pth", "2d", seed=1)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    """Keep the statistics cache out of the user's home."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))


def test_predict_prints_the_report_and_writes_json(sample_root, weights_2d, tmp_path, capsys):
    out = tmp_path / "labels"
    code = main(["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(weights_2d),
                 "--out", str(out), "--report", str(tmp_path / "r.json"), "--device", "cpu",
                 "--blend", "gaussian", "--tta", "--batch", "8", "--chunk", "32", "--overlap", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    for text in ("classes: background", "mean winning probability", "reassigned to background",
                 "benchmark: wall", "peak RAM", "device cpu, batch 8", "Unet with resnet18"):
        assert text in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["config"]["blend"] == "gaussian" and data["config"]["tta"] is True
    assert data["scans"][0]["window"] == [1, 32, 32] and data["scans"][0]["chunks"] == 16 * 4
    assert sum(data["totals"]["counts"]) == 16 * 64 * 64 == data["totals"]["voxels"]
    assert open_volume(out, role="mask").shape == (16, 64, 64)


def test_predict_errors_are_one_line_with_exit_code_2(sample_root, weights_2d, tmp_path, capsys):
    scan = str(sample_root / "scans" / "bone_00")
    cases = [
        (["predict", scan, "--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "a")],
         "does not exist"),
        (["predict", scan, "--weights", str(weights_2d), "--out", str(tmp_path / "b"), "--overlap", "1"],
         "overlap"),
        (["predict", "--weights", str(weights_2d), "--out", str(tmp_path / "c")], "no scan"),
        (["predict", scan, "--data", str(sample_root), "--weights", str(weights_2d), "--out",
          str(tmp_path / "d")], "not both"),
        (["predict", scan, "--weights", str(weights_2d), "--out", str(sample_root / "scans")],
         "already exists"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["predict", scan, "--weights", str(weights_2d), "--out", "x", "--batch", "lots"])


def test_torchrun_shares_the_scans_between_two_cpu_processes(sample_root, weights_2d, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BONE_APPS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "bone_apps", "predict", "--data", str(sample_root), "--weights", str(weights_2d),
         "--out", str(out), "--report", str(report), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"bone_{k:02d}" for k in range(4)]
    data = json.loads(report.read_text())
    assert data["benchmark"]["world_size"] == 2
    assert [Path(s["scan"]).name for s in data["scans"]] == [f"bone_{k:02d}" for k in range(4)]
    assert [s["rank"] for s in data["scans"]] == [0, 1, 0, 1]
    assert done.stdout.count("classes: background") == 1  # rank 0 alone prints the report
    # Same labels as one process predicting the same scan.
    single = tmp_path / "single"
    assert main(["predict", str(sample_root / "scans" / "bone_01"), "--weights", str(weights_2d),
                 "--out", str(single), "--device", "cpu"]) == 0
    a, b = open_volume(single, role="mask"), open_volume(out / "bone_01", role="mask")
    assert np.array_equal(a.read_slab(0, 16), b.read_slab(0, 16))


def test_help_lists_predict_options():
    done = subprocess.run([sys.executable, "-m", "bone_apps", "predict", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--weights", "--chunk", "--chunk-depth", "--overlap", "--threshold", "--blend",
                   "--batch", "--device", "--tta", "--probabilities", "--report", "--overwrite", "--data"):
        assert option in done.stdout


def test_ctrl_c_stops_cleanly_and_leaves_nothing_under_the_final_name(weights_2d, tmp_path):
    scan = tmp_path / "scan"
    # Enough slices that the run cannot finish while a loaded machine delays the signal.
    write_volume(scan, np.random.default_rng(0).integers(0, 255, (480, 64, 64)).astype(np.uint8))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "labels"
    env = {**os.environ, "BONE_APPS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bone_apps", "predict", str(scan), "--weights", str(weights_2d),
         "--out", str(out), "--device", "cpu", "--batch", "1", "--chunk", "32", "--overlap", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl-C as in a terminal, even when the tests run where SIGINT is ignored (a shell's
        # background job): Python only installs its KeyboardInterrupt handler when it is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(any(p.iterdir()) for p in work.glob(".labels.partial-*")):
            break  # a slice is written: the run is under way
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it was interrupted: {proc.communicate()[1][-3000:]}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped" in err and "Traceback" not in err
    assert list(work.iterdir()) == []
