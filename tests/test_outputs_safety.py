"""Users' files are never lost: --overwrite replaces only what bone_apps wrote, refused runs
leave nothing, one writer per output, and disk errors are one sentence with no leftovers.

Every case runs on real files and checks that every file that was there before is
byte-identical afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_predict import make_weights

from bone_apps.cli import main
from bone_apps.core.errors import ForeignFilesError, OutputLockedError, OutputWriteError
from bone_apps.core.io import outputs
from bone_apps.core.io.writer import VolumeWriter, write_volume

SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "model.pth", "2d", seed=1)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path_factory, monkeypatch):
    """Keep the statistics cache out of the user's home and out of the folders compared."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path_factory.mktemp("cache")))


def user_scan_folder(folder: Path, name: str = "scan") -> Path:
    """A scan as a user has it: TIFF slices written by another program (no marker)."""
    scan = folder / name
    scan.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 60000, SHAPE, dtype=np.uint16)
    for z, slice_ in enumerate(data):
        tifffile.imwrite(scan / f"scan_{z:04d}.tif", slice_)
    return scan


def hashes(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) and its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_sentence(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".partial-" in p.name or p.name.endswith(".lock")
            or ".old-" in p.name or ".previous-" in p.name]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ----------------------------------------------------------------------------------------------
# bone predict


def test_predict_overwrite_into_the_folder_holding_scan_and_weights_is_refused(
        weights, tmp_path, monkeypatch, capsys):
    """The user's report: `--out .` with --overwrite deleted the scan and the weights."""
    work = tmp_path / "work"
    user_scan_folder(work)
    shutil.copy(weights, work / "model.pth")
    (work / "notes.txt").write_text("my notes")
    before = hashes(work)
    monkeypatch.chdir(work)
    code = main(["predict", "scan", "--weights", "model.pth", "--out", ".", "--overwrite",
                 "--device", "cpu", "--batch", "16"])
    assert code == 2
    one_sentence(capsys, ". holds files bone_apps did not write (model.pth, notes.txt, scan)",
                 "choose an empty or new folder")
    assert hashes(work) == before and sorted(os.listdir(tmp_path)) == ["work"]


def test_predict_overwrite_of_a_foreign_multipage_tiff_is_refused(weights, tmp_path, capsys):
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, np.zeros(SHAPE, np.uint16) + 7)
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.ones(SHAPE, np.uint8))  # someone else's file
    before = hashes(tmp_path)
    code = main(["predict", str(scan), "--weights", str(weights), "--out", str(labels),
                 "--overwrite", "--device", "cpu", "--batch", "16"])
    assert code == 2
    one_sentence(capsys, f"{labels} was not written by bone_apps")
    assert hashes(tmp_path) == before


def test_predict_overwrite_replaces_its_own_outputs_only(sample_root, weights, tmp_path, capsys):
    scan = str(sample_root / "scans" / "bone_00")
    out, report = tmp_path / "labels", tmp_path / "report.json"
    argv = ["predict", scan, "--weights", str(weights), "--out", str(out), "--report", str(report),
            "--device", "cpu", "--batch", "16"]
    assert main(argv) == 0
    assert json.loads(report.read_text())["written_by"].startswith("bone_apps")
    assert (out / outputs.MARKER).is_file() and outputs.foreign_entries(out) == []
    capsys.readouterr()
    assert main(argv) == 2  # no --overwrite: the report is refused before any work
    one_sentence(capsys, f"{report} already exists")
    assert main([*argv, "--overwrite"]) == 0  # ours: replaced
    capsys.readouterr()
    # A file the user put into the label folder makes it no longer ours alone.
    (out / "my_edit.tif").write_bytes(b"edited by hand")
    before = hashes(tmp_path)
    assert main([*argv, "--overwrite"]) == 2
    one_sentence(capsys, f"{out} holds files bone_apps did not write (my_edit.tif)")
    assert hashes(tmp_path) == before and leftovers(tmp_path) == []


def test_predict_report_over_a_foreign_file_is_refused_before_any_work(
        sample_root, weights, tmp_path, capsys):
    report = tmp_path / "results.json"
    report.write_text('{"mine": true}')
    code = main(["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(weights),
                 "--out", str(tmp_path / "labels"), "--report", str(report), "--overwrite",
                 "--device", "cpu"])
    assert code == 2
    one_sentence(capsys, f"{report} was not written by bone_apps")
    assert report.read_text() == '{"mine": true}' and not (tmp_path / "labels").exists()


def test_a_full_disk_is_one_sentence_and_leaves_nothing(sample_root, weights, tmp_path,
                                                         monkeypatch, capsys):
    real_write = tifffile.TiffWriter.write
    calls = {"n": 0}

    def full_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", full_after_three)
    out = tmp_path / "labels"
    code = main(["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(weights),
                 "--out", str(out), "--device", "cpu", "--batch", "16"])
    assert code == 2
    one_sentence(capsys, f"{out} could not be written because the disk is full")
    assert os.listdir(tmp_path) == []


def test_a_second_run_on_the_same_output_stops_and_names_the_first(
        sample_root, weights, tmp_path, capsys):
    out = tmp_path / "labels"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        outputs.lock_name(out).write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "command": "bone predict X"}))
        argv = ["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(weights),
                "--out", str(out), "--overwrite", "--device", "cpu", "--batch", "16"]
        assert main(argv) == 2
        one_sentence(capsys, f"{out} is being written by another bone_apps run",
                     f"process {holder.pid}", "bone predict X")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone: the stale lock is taken over.
    assert main(argv) == 0 and out.is_dir() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# The writer itself


def test_writer_locks_cleans_stale_partials_and_survives_a_vanished_folder(tmp_path):
    data = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    target = tmp_path / "stack"
    stale = outputs.partial_name(target, pid=dead_pid())
    stale.mkdir()
    (stale / "slice_0000.tif").write_bytes(b"half")
    with VolumeWriter(target, data.shape, data.dtype) as writer:
        assert not stale.exists()  # a killed run's leftover is cleaned up
        with pytest.raises(OutputLockedError, match=f"{target} is being written by another"):
            VolumeWriter(target, data.shape, data.dtype, overwrite=True)
        for slice_ in data:
            writer.write(slice_)
    assert sorted(os.listdir(tmp_path)) == ["stack"]
    write_volume(target, data + 1, overwrite=True)  # ours: replaced

    gone = tmp_path / "gone"
    gone.mkdir()
    writer = VolumeWriter(gone / "stack", data.shape, data.dtype)
    writer.write(data[0])
    shutil.rmtree(gone)  # the folder vanishes mid-run
    with pytest.raises(OutputWriteError, match="its folder disappeared"):
        writer.write(data[1])
    assert not gone.exists()


def test_writer_refuses_a_foreign_folder_and_a_multipage_without_our_tag(tmp_path):
    data = np.zeros((2, 8, 8), np.uint8)
    scan = user_scan_folder(tmp_path)
    tiff = tmp_path / "other.tif"
    tifffile.imwrite(tiff, data)
    before = hashes(tmp_path)
    with pytest.raises(ForeignFilesError, match="scan_0000.tif, scan_0001.tif, scan_0002.tif"):
        write_volume(scan, data, overwrite=True)
    with pytest.raises(ForeignFilesError, match="was not written by bone_apps"):
        write_volume(tiff, data, overwrite=True)
    assert hashes(tmp_path) == before
    ours = tmp_path / "ours.tif"
    write_volume(ours, data)
    assert outputs.tiff_is_ours(ours)
    write_volume(ours, data + 3, overwrite=True)
    assert tifffile.imread(ours)[0, 0, 0] == 3


def test_read_only_folder_is_one_sentence(sample_root, weights, tmp_path, capsys):
    if os.geteuid() == 0:
        # chmod does not stop root; sysfs refuses new files even to root.
        folder = Path("/sys")
        if os.access(folder / "bone_apps_probe", os.F_OK):
            pytest.skip("/sys is unusual here")
        try:
            os.open(folder / ".bone_apps_probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            pytest.skip("no read-only folder available to root")
        except OSError:
            pass
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    out = folder / "labels"
    code = main(["predict", str(sample_root / "scans" / "bone_00"), "--weights", str(weights),
                 "--out", str(out), "--device", "cpu", "--batch", "16"])
    assert code == 2
    one_sentence(capsys, f"{out} could not be written because")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# bone iou --json


def test_iou_json_is_refused_over_any_file_and_replaced_only_when_ours(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    mask = (np.arange(SHAPE[2]) % 3).astype(np.uint8)[None, None, :].repeat(16, 0).repeat(64, 1)
    write_volume(ref, mask)
    write_volume(pred, mask)
    scores = tmp_path / "scores.json"
    scores.write_text("user data\n")
    base = ["iou", str(ref), str(pred), "--device", "cpu", "--json", str(scores)]
    assert main(base) == 2
    one_sentence(capsys, f"{scores} already exists", "--overwrite")
    assert main([*base, "--overwrite"]) == 2
    one_sentence(capsys, f"{scores} was not written by bone_apps")
    assert scores.read_text() == "user data\n"

    ours = tmp_path / "ours.json"
    assert main([*base[:-1], str(ours)]) == 0
    assert json.loads(ours.read_text())["written_by"].startswith("bone_apps")
    assert main([*base[:-1], str(ours), "--overwrite"]) == 0


def test_iou_json_on_a_full_disk_leaves_no_partial(tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    write_volume(ref, np.ones((2, 8, 8), np.uint8))

    def full(path, data):
        with open(path, "wb") as handle:
            handle.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_all", full)
    scores = tmp_path / "scores.json"
    assert main(["iou", str(ref), str(ref), "--device", "cpu", "--json", str(scores)]) == 2
    one_sentence(capsys, f"{scores} could not be written because the disk is full")
    assert sorted(os.listdir(tmp_path)) == ["ref"]


# ----------------------------------------------------------------------------------------------
# bone synth


def test_synth_refuses_a_folder_of_user_files_and_replaces_its_own(tmp_path, capsys):
    user_scan_folder(tmp_path / "data", "scans")
    before = hashes(tmp_path)
    argv = ["synth", str(tmp_path / "data"), "--scans", "1", "--shape", "4", "32", "32"]
    assert main([*argv, "--overwrite"]) == 2
    one_sentence(capsys, "data holds files bone_apps did not write (scans)")
    assert hashes(tmp_path) == before

    ours = str(tmp_path / "ours")
    assert main(["synth", ours, "--scans", "1", "--shape", "4", "32", "32"]) == 0
    assert main(["synth", ours, "--scans", "1", "--shape", "4", "32", "32"]) == 2
    one_sentence(capsys, "already exists")
    assert main(["synth", ours, "--scans", "1", "--shape", "4", "32", "32", "--seed", "3",
                 "--overwrite"]) == 0


# ----------------------------------------------------------------------------------------------
# bone fit


def fit_argv(sample_root: Path, out: Path, cache: Path, mask: Path | None = None) -> list[str]:
    return ["fit", "--pair", str(sample_root / "scans" / "bone_00"),
            str(mask or sample_root / "masks" / "bone_00"),
            "--pair", str(sample_root / "scans" / "bone_01"), str(sample_root / "masks" / "bone_01"),
            "--out", str(out), "--init", "random", "--patch", "32", "--batch", "4", "--epochs", "1",
            "--workers", "0", "--no-profile", "--cache-dir", str(cache)]


def test_fit_overwrite_refuses_a_folder_of_user_files(sample_root, weights, tmp_path, capsys):
    work = tmp_path / "work"
    user_scan_folder(work)
    shutil.copy(weights, work / "model.pth")
    before = hashes(work)
    for extra in ([], ["--overwrite"]):
        assert main([*fit_argv(sample_root, work, tmp_path / "cache"), *extra]) == 2
        one_sentence(capsys, f"{work} holds files bone_apps did not write (model.pth, scan)")
        assert hashes(work) == before and sorted(os.listdir(tmp_path)) == ["work"]


def test_a_refused_fit_keeps_the_earlier_run_and_leaves_nothing(sample_root, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache, run = tmp_path / "cache", tmp_path / "run"
        assert main(fit_argv(sample_root, run, cache)) == 0
        assert outputs.read_marker(run)["kind"] == "fit-run"
        earlier = hashes(run)
        bad = tmp_path / "bad_mask"
        write_volume(bad, np.zeros((16, 32, 32), np.uint8))
        capsys.readouterr()
        # Refused by the data checks, after the output folder was claimed.
        assert main([*fit_argv(sample_root, run, cache, bad), "--overwrite"]) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert hashes(run) == earlier and leftovers(tmp_path) == []
        fresh = tmp_path / "fresh" / "run"
        assert main(fit_argv(sample_root, fresh, cache, bad)) == 2
        assert not (tmp_path / "fresh").exists()  # nothing left behind, so a rerun is not refused
        # Another run holds the folder: refused, naming it.
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            outputs.lock_name(run).write_text(json.dumps(
                {"pid": holder.pid, "host": socket.gethostname(), "command": "bone fit A"}))
            capsys.readouterr()
            assert main([*fit_argv(sample_root, run, cache), "--overwrite"]) == 2
            one_sentence(capsys, f"{run} is being written by another bone_apps run",
                         f"process {holder.pid}")
            assert main(["fit", "--resume", str(run), "--workers", "0"]) == 2
        finally:
            holder.kill()
            holder.wait()
        assert hashes(run) == earlier
        # Its own run is replaced with --overwrite once the checks passed.
        assert main([*fit_argv(sample_root, run, cache), "--overwrite", "--seed", "5"]) == 0
        assert leftovers(tmp_path) == [] and outputs.foreign_entries(run) == []
        assert json.loads((run / "config.json").read_text())["seed"] == 5
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# The windows' "Replace an existing output" goes through the same core checks


def test_dlpred_replace_checkbox_path_refuses_a_foreign_folder(weights, tmp_path):
    from bone_apps.core.predict.segment import run_predict
    from bone_apps.dlpred.bridge import make_config
    from bone_apps.dlpred.options import OptionValues

    work = tmp_path / "work"
    scan = user_scan_folder(work)
    (work / "model.pth").write_bytes(weights.read_bytes())
    before = hashes(work)
    options = OptionValues(device="cpu", chunk=512, chunk_depth=16, overlap=0.25, threshold=0.5,
                           blend="mean", batch=16, tta=False, probabilities=False)
    config = make_config(scan, work / "model.pth", work, options, overwrite=True, is_3d=False)
    with pytest.raises(ForeignFilesError, match="holds files bone_apps did not write"):
        run_predict(config)
    assert hashes(work) == before
