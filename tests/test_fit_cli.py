"""`bone fit` on the command line, and DDP under torchrun on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bone_apps.cli import main
from bone_apps.core.fit.config import FitConfig

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pairs(sample_root, n=2) -> list[str]:
    ids = sorted(p.name for p in (sample_root / "scans").iterdir())[:n]
    args = []
    for i in ids:
        args += ["--pair", str(sample_root / "scans" / i), str(sample_root / "masks" / i)]
    return args


def test_list_models(capsys):
    assert main(["fit", "--list-models"]) == 0
    out = capsys.readouterr().out
    assert "Unet" in out and "resnet18" in out and "BasicUNet" in out


def test_cli_fit_with_a_config_file_and_overriding_flags(sample_root, cache, tmp_path, capsys):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"out": str(tmp_path / "ignored"), "patch": 32, "batch": 4,
                                  "epochs": 3, "lr": 0.002, "init": "random",
                                  "cache_dir": str(cache), "profile": False}))
    out = tmp_path / "run"
    code = main(["fit", "--config", str(config), *_pairs(sample_root), "--out", str(out),
                 "--epochs", "1", "--workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "best validation IoU" in printed and "scan " in printed
    saved = FitConfig.load(out / "config.json")
    assert saved.epochs == 1 and saved.lr == 0.002 and saved.patch == 32  # flags win
    assert not saved.easy  # model options were given

    # The same folder again is refused with one line and exit code 2.
    assert main(["fit", "--config", str(config), *_pairs(sample_root), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # Resuming a finished run has nothing left to do.
    assert main(["fit", "--resume", str(out), "--workers", "0"]) == 0


def test_cli_problems_are_one_line(sample_root, tmp_path, capsys):
    assert main(["fit", "--pair", str(tmp_path / "nope"), str(tmp_path / "nada"),
                 "--out", str(tmp_path / "o"), "--init", "random"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bone fit:") and "does not exist" in err and "Traceback" not in err


def test_torchrun_ddp_on_cpu(sample_root, cache, tmp_path):
    """Two gloo processes fit one epoch; rank 0 alone writes the outputs."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "bone_apps", "fit", "--data", str(sample_root),
               "--out", str(out), "--patch", "32", "--batch", "8", "--epochs", "1",
               "--init", "random", "--workers", "1", "--cache-dir", str(cache), "--no-profile"]
    # Its own process group, so a hang cannot leave rank processes behind.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["best_val_iou"] > 0.3
    assert (out / "model.pth").is_file() and (out / "checkpoint.pth").is_file()
    lines = (out / "log.csv").read_text().splitlines()
    assert len(lines) == 2  # header + one epoch, written once
    assert "DistributedDataParallel" in stdout and stdout.count("epoch 1/1:") == 1
