"""The catalogue of what real users bring to `bone`: scanners' and other tools' files, wrong
choices and unlucky folders, all run through the real command line together.

Every case asserts the same contract: exit code 2 with exactly one sentence on stderr (or 0
where success is right), never a traceback, and every file that was in the case's folder
before is byte-identical afterwards (a refusal leaves nothing new behind either).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_predict import make_weights

from bone_apps.cli import main as bone

pytest.importorskip("imagecodecs")

SHAPE = (16, 64, 64)
FAST = ["--device", "cpu", "--batch", "16"]  # predict on the CPU, all 16 slices in one pass
FIT_FAST = ["--init", "random", "--patch", "32", "--batch", "16", "--epochs", "1",
            "--patches-per-tile", "1", "--val-slices", "-1", "--workers", "0",
            "--stats-workers", "1", "--no-profile", "--device", "cpu"]


@dataclass(frozen=True)
class Shared:
    """What every case may use without copying: a weights file and a sample dataset."""

    weights: Path
    data: Path

    def copy(self, what: str, into: Path) -> Path:
        """Copy scans/bone_00, masks/bone_01, ... of the sample dataset into the case's folder,
        as the user's own files (without the marker that says bone_apps wrote them)."""
        target = into / what
        shutil.copytree(self.data / what, target, ignore=shutil.ignore_patterns(".bone_apps.json"))
        return target


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    from bone_apps.core.data.synthetic import write_sample_dataset

    data = tmp_path_factory.mktemp("catalogue-data")
    write_sample_dataset(data, scans=2, seed=0, shape=SHAPE)
    weights = make_weights(tmp_path_factory.mktemp("catalogue-weights") / "model.pth", "2d", seed=3)
    return Shared(weights, data)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path_factory, monkeypatch):
    """The statistics cache lives outside the folders compared."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path_factory.mktemp("cache")))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# Writing files as scanners and other tools do


def pixels(dtype=np.uint16, shape=SHAPE) -> np.ndarray:
    """Deterministic scan-like pixels (smooth enough for JPEG when 8-bit)."""
    z, y, x = np.indices(shape)
    base = (40 + 2 * z + y + x) % 200
    if dtype == np.uint8:
        return base.astype(np.uint8)
    noise = np.random.default_rng(5).integers(0, 2000, shape)
    return (base * 250 + noise).astype(dtype)


def slices(folder: Path, data: np.ndarray | None = None, name: str = "slice_{:03d}.tif",
           **kwargs) -> Path:
    """A folder of one-slice TIFF files, as most scanners export."""
    data = pixels() if data is None else data
    folder.mkdir(parents=True)
    kwargs.setdefault("photometric", "minisblack")
    for z, plane in enumerate(data):
        tifffile.imwrite(folder / name.format(z), plane, **kwargs)
    return folder


def scan(d: Path) -> Path:
    return slices(d / "scan")


def weights_of(d: Path, name: str = "model.pth", channels: int = 1, nan: bool = False) -> Path:
    """A complete weights file whose model takes `channels` inputs (the metadata says 1)."""
    import torch

    from bone_apps.core.model.models import build_model, required_multiple
    from bone_apps.core.model.weights import save_weights

    torch.manual_seed(0)
    model = build_model("2d", "Unet", "resnet18", channels, 3)
    if nan:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 3,
            "class_names": ["background", "bone", "pores"], "patch_size": 64, "context": 0,
            "patch_depth": 1, "norm": "zscore", "required_multiple": required_multiple(model, "2d")}
    return save_weights(d / name, model, meta)


def revalue(folder: Path, values: tuple[int, ...]) -> Path:
    """Rewrite a 0/1/2 mask folder in place with other values (e.g. 0/255/255, 1/2/3)."""
    for file in sorted(folder.glob("*.tif")):
        labels = tifffile.imread(file)
        tifffile.imwrite(file, np.asarray(values, np.uint8)[labels], photometric="minisblack")
    return folder


# ----------------------------------------------------------------------------------------------
# Set-ups: each builds the user's folder `d` (the command runs inside it)


def nothing(d: Path, s: Shared) -> None:
    pass


def scan_only(d: Path, s: Shared) -> None:
    scan(d)


def scan_and_weights_here(d: Path, s: Shared) -> None:
    scan(d)
    shutil.copy(s.weights, d / "model.pth")
    (d / "notes.txt").write_text("my notes")


def scan_and_user_file(d: Path, s: Shared) -> None:
    scan(d)
    (d / "results.json").write_text('{"mine": true}\n')
    (d / "notes.txt").write_text("my notes")


def weights_html(d: Path, s: Shared) -> None:
    scan(d)
    (d / "model.pth").write_text("<!DOCTYPE html><html><body>Sign in to download</body></html>")


def weights_empty(d: Path, s: Shared) -> None:
    scan(d)
    (d / "model.pth").write_bytes(b"")


def weights_truncated(d: Path, s: Shared) -> None:
    scan(d)
    data = s.weights.read_bytes()
    (d / "model.pth").write_bytes(data[: len(data) // 2])


def weights_nan(d: Path, s: Shared) -> None:
    scan(d)
    weights_of(d, nan=True)


def weights_two_channels(d: Path, s: Shared) -> None:
    scan(d)
    weights_of(d, channels=2)


def weights_directory(d: Path, s: Shared) -> None:
    scan(d)
    (d / "model.pth").mkdir()


def empty_scan_folder(d: Path, s: Shared) -> None:
    (d / "scan").mkdir()


def non_tiff_scan_folder(d: Path, s: Shared) -> None:
    (d / "scan").mkdir()
    (d / "scan" / "readme.txt").write_text("exported by the scanner")
    (d / "scan" / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def slice_of_another_size(d: Path, s: Shared) -> None:
    scan(d)
    tifffile.imwrite(d / "scan" / "slice_016.tif", np.zeros((32, 64), np.uint16))


def slice_of_another_type(d: Path, s: Shared) -> None:
    scan(d)
    tifffile.imwrite(d / "scan" / "slice_016.tif", np.zeros((64, 64), np.uint8))


def dangling_link_slice(d: Path, s: Shared) -> None:
    scan(d)
    (d / "scan" / "slice_016.tif").symlink_to(d / "moved" / "slice_016.tif")


def appledouble_files(d: Path, s: Shared) -> None:
    scan(d)
    (d / "scan" / "._slice_000.tif").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (d / "scan" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


def thumbs_db(d: Path, s: Shared) -> None:
    scan(d)
    (d / "scan" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")


def two_page_sizes(d: Path, s: Shared) -> None:
    with tifffile.TiffWriter(d / "scan.tif") as tif:
        for plane in (*pixels()[:8], *pixels(shape=(4, 32, 32))):
            tif.write(plane, photometric="minisblack", metadata=None)


def ome_two_series(d: Path, s: Shared) -> None:
    with tifffile.TiffWriter(d / "scan.ome.tif", ome=True) as tif:
        tif.write(pixels(), photometric="minisblack", metadata={"axes": "ZYX"})
        tif.write(pixels(shape=(8, 32, 32)), photometric="minisblack", metadata={"axes": "ZYX"})


def imagej_two_channels(d: Path, s: Shared) -> None:
    data = np.stack([pixels(), pixels()], axis=1)  # Z, C, Y, X
    tifffile.imwrite(d / "scan.tif", data, imagej=True, metadata={"axes": "ZCYX"})


def rgb_scan(d: Path, s: Shared) -> None:
    grey = pixels(np.uint8)
    slices(d / "scan", np.stack([grey, grey, grey], axis=-1), photometric="rgb")


def truncated_scan(d: Path, s: Shared) -> None:
    tifffile.imwrite(d / "full.tif", pixels(), photometric="minisblack")
    data = (d / "full.tif").read_bytes()
    (d / "full.tif").unlink()
    (d / "scan.tif").write_bytes(data[: len(data) * 2 // 3])


def compressed(compression: str, dtype=np.uint16) -> Callable[[Path, Shared], None]:
    def setup(d: Path, s: Shared) -> None:
        slices(d / "scan", pixels(dtype), compression=compression)
    setup.__name__ = f"compressed_{compression}"
    return setup


def bigtiff_scan(d: Path, s: Shared) -> None:
    tifffile.imwrite(d / "scan.tif", pixels(), bigtiff=True, photometric="minisblack")


def tiled_scan(d: Path, s: Shared) -> None:
    slices(d / "scan", tile=(32, 32), compression="zlib")


def unicode_paths(d: Path, s: Shared) -> None:
    slices(d / "my scans" / "Knochen ü 1")
    shutil.copy(s.weights, d / "my scans" / "modèle 1.pth")


def read_only_folder(d: Path, s: Shared) -> None:
    scan(d)
    if os.geteuid() != 0:
        (d / "locked").mkdir()
        (d / "locked" / "keep.txt").write_text("mine")
        (d / "locked").chmod(0o555)
        return
    # chmod does not stop root; sysfs refuses new files even to root.
    try:
        os.close(os.open("/sys/.bone_apps_probe", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        (d / "locked").symlink_to("/sys")
    else:
        os.unlink("/sys/.bone_apps_probe")
        pytest.skip("no read-only folder available to root")


def no_cuda(d: Path, s: Shared) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    scan(d)


def two_masks(d: Path, s: Shared) -> None:
    s.copy("scans/bone_00", d)
    s.copy("masks/bone_00", d)


def masks_of_two_shapes(d: Path, s: Shared) -> None:
    s.copy("masks/bone_00", d)
    slices(d / "short", np.zeros((8, 64, 64), np.uint8))


def masks_0_255(d: Path, s: Shared) -> None:
    revalue(s.copy("masks/bone_00", d), (0, 255, 255))
    revalue(s.copy("masks/bone_01", d), (0, 255, 0))


def user_json_and_masks(d: Path, s: Shared) -> None:
    s.copy("masks/bone_00", d)
    s.copy("masks/bone_01", d)
    (d / "scores.json").write_text('{"mine": true}\n')


def user_files_for_synth(d: Path, s: Shared) -> None:
    slices(d / "data" / "scans" / "mine")
    (d / "data" / "notes.txt").write_text("my notes")


# ----------------------------------------------------------------------------------------------
# The catalogue: (id, set-up, argv, expected exit code). argv runs inside the case's folder;
# {weights} is the shared weights file.

PREDICT = ["predict", "scan", "--weights", "{weights}", "--out", "labels", *FAST]
FIT_PAIRS = ["fit", "--pair", "scans/bone_00", "masks/bone_00", "--pair", "scans/bone_01",
             "masks/bone_01"]
FIT = [*FIT_PAIRS, "--out", "run", *FIT_FAST]


def fit_copy(d: Path, s: Shared) -> None:
    """Scans and masks laid out as ROOT/scans/<id> and ROOT/masks/<id>, as FIT expects."""
    for k in (0, 1):
        s.copy(f"scans/bone_0{k}", d)
        s.copy(f"masks/bone_0{k}", d)


def fit_values(values: tuple[int, ...]) -> Callable[[Path, Shared], None]:
    def setup(d: Path, s: Shared) -> None:
        fit_copy(d, s)
        for k in (0, 1):
            revalue(d / "masks" / f"bone_0{k}", values)
    return setup


def fit_scan_as_mask(d: Path, s: Shared) -> None:
    fit_copy(d, s)
    shutil.rmtree(d / "masks" / "bone_00")
    shutil.copytree(d / "scans" / "bone_00", d / "masks" / "bone_00")


def fit_short_mask(d: Path, s: Shared) -> None:
    fit_copy(d, s)
    shutil.rmtree(d / "masks" / "bone_00")
    slices(d / "masks" / "bone_00", np.zeros((8, 64, 64), np.uint8))


def fit_empty_mask(d: Path, s: Shared) -> None:
    fit_copy(d, s)
    shutil.rmtree(d / "masks" / "bone_00")
    (d / "masks" / "bone_00").mkdir()


CATALOGUE = [
    # -- where predict writes
    ("predict-out-dot-holding-the-scan", scan_and_weights_here,
     ["predict", "scan", "--weights", "model.pth", "--out", ".", *FAST], 2),
    ("predict-out-dot-holding-the-scan-overwrite", scan_and_weights_here,
     ["predict", "scan", "--weights", "model.pth", "--out", ".", "--overwrite", *FAST], 2),
    ("predict-out-is-an-existing-file", scan_and_user_file,
     ["predict", "scan", "--weights", "{weights}", "--out", "notes.txt", *FAST], 2),
    ("predict-out-is-an-existing-file-overwrite", scan_and_user_file,
     ["predict", "scan", "--weights", "{weights}", "--out", "notes.txt", "--overwrite", *FAST], 2),
    ("predict-out-is-the-weights-overwrite", scan_and_weights_here,
     ["predict", "scan", "--weights", "model.pth", "--out", "model.pth", "--overwrite", *FAST], 2),
    ("predict-out-is-the-scan-overwrite", scan_only,
     ["predict", "scan", "--weights", "{weights}", "--out", "scan", "--overwrite", *FAST], 2),
    ("predict-out-inside-the-scan-folder", scan_only,
     ["predict", "scan", "--weights", "{weights}", "--out", "scan/labels", *FAST], 2),
    ("predict-out-under-a-file", scan_and_user_file,
     ["predict", "scan", "--weights", "{weights}", "--out", "notes.txt/labels", *FAST], 2),
    ("predict-report-under-a-file", scan_and_user_file,
     [*PREDICT, "--report", "notes.txt/report.json"], 2),
    ("predict-report-over-a-user-file", scan_and_user_file,
     [*PREDICT, "--report", "results.json"], 2),
    ("predict-report-over-a-user-file-overwrite", scan_and_user_file,
     [*PREDICT, "--report", "results.json", "--overwrite"], 2),
    ("predict-report-over-a-slice-overwrite", scan_only,
     [*PREDICT, "--report", "scan/slice_000.tif", "--overwrite"], 2),
    ("predict-report-is-the-label-file-overwrite", bigtiff_scan,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels.tif", "--report",
      "labels.tif", "--overwrite", *FAST], 2),
    ("predict-report-inside-the-label-folder", scan_only,
     [*PREDICT, "--report", "labels/report.json"], 2),
    ("predict-multipage-scan-into-a-folder-name", bigtiff_scan,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels", *FAST], 2),
    ("predict-into-a-read-only-folder", read_only_folder,
     ["predict", "scan", "--weights", "{weights}", "--out", "locked/labels", *FAST], 2),
    # -- weights files
    ("weights-html-page-named-pth", weights_html,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    ("weights-empty-file", weights_empty,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    ("weights-truncated", weights_truncated,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    ("weights-nan", weights_nan,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    ("weights-two-input-channels", weights_two_channels,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    ("weights-is-a-folder", weights_directory,
     ["predict", "scan", "--weights", "model.pth", "--out", "labels", *FAST], 2),
    # -- scans that cannot be used
    ("scan-does-not-exist", nothing, PREDICT, 2),
    ("scan-folder-empty", empty_scan_folder, PREDICT, 2),
    ("scan-folder-without-tiff", non_tiff_scan_folder, PREDICT, 2),
    ("slice-of-another-size", slice_of_another_size, PREDICT, 2),
    ("slice-of-another-type", slice_of_another_type, PREDICT, 2),
    ("slice-is-a-dangling-link", dangling_link_slice, PREDICT, 2),
    ("multipage-with-two-page-sizes", two_page_sizes,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels.tif", *FAST], 2),
    ("ome-tiff-with-two-series", ome_two_series,
     ["predict", "scan.ome.tif", "--weights", "{weights}", "--out", "labels.tif", *FAST], 2),
    ("imagej-hyperstack-with-two-channels", imagej_two_channels,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels.tif", *FAST], 2),
    ("rgb-slices", rgb_scan, PREDICT, 2),
    ("truncated-multipage", truncated_scan,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels.tif", *FAST], 2),
    # -- scans that must just work
    ("appledouble-and-ds-store-skipped", appledouble_files, PREDICT, 0),
    ("thumbs-db-skipped", thumbs_db, PREDICT, 0),
    ("lzw-slices", compressed("lzw"), PREDICT, 0),
    ("zstd-slices", compressed("zstd"), PREDICT, 0),
    ("jpeg-8bit-slices", compressed("jpeg", np.uint8), PREDICT, 0),
    ("deflate-slices", compressed("adobe_deflate"), PREDICT, 0),
    ("packbits-slices", compressed("packbits"), PREDICT, 0),
    ("bigtiff-multipage", bigtiff_scan,
     ["predict", "scan.tif", "--weights", "{weights}", "--out", "labels.tif", *FAST], 0),
    ("tiled-slices", tiled_scan, PREDICT, 0),
    ("spaces-and-unicode-in-paths", unicode_paths,
     ["predict", "my scans/Knochen ü 1", "--weights", "my scans/modèle 1.pth",
      "--out", "Ergebnisse é/Knochen ü 1", "--report", "Ergebnisse é.json", *FAST], 0),
    # -- options out of range
    ("predict-chunk-zero", scan_only, [*PREDICT, "--chunk", "0"], 2),
    ("predict-chunk-negative", scan_only, [*PREDICT, "--chunk", "-64"], 2),
    ("predict-overlap-1.5", scan_only, [*PREDICT, "--overlap", "1.5"], 2),
    ("predict-cuda-without-a-gpu", no_cuda,
     ["predict", "scan", "--weights", "{weights}", "--out", "labels", "--device", "cuda"], 2),
    # -- bone iou
    ("iou-scan-given-as-the-prediction", two_masks, ["iou", "masks/bone_00", "scans/bone_00"], 2),
    ("iou-16bit-scan-swapped-with-the-mask", two_masks,
     ["iou", "scans/bone_00", "masks/bone_00", "--device", "cpu"], 2),
    ("iou-reference-does-not-exist", two_masks,
     ["iou", "masks/bone_99", "masks/bone_00", "--device", "cpu"], 2),
    ("iou-different-shapes", masks_of_two_shapes, ["iou", "masks/bone_00", "short", "--device", "cpu"], 2),
    ("iou-0-255-masks", masks_0_255, ["iou", "masks/bone_00", "masks/bone_01", "--device", "cpu"], 0),
    ("iou-json-over-a-user-file", user_json_and_masks,
     ["iou", "masks/bone_00", "masks/bone_01", "--device", "cpu", "--json", "scores.json"], 2),
    ("iou-json-over-a-user-file-overwrite", user_json_and_masks,
     ["iou", "masks/bone_00", "masks/bone_01", "--device", "cpu", "--json", "scores.json", "--overwrite"], 2),
    # -- bone fit
    ("fit-scan-given-as-a-mask", fit_scan_as_mask, FIT, 2),
    ("fit-masks-0-255", fit_values((0, 255, 255)), FIT, 0),
    ("fit-masks-1-2-3", fit_values((1, 2, 3)), FIT, 0),
    ("fit-mask-of-another-shape", fit_short_mask, FIT, 2),
    ("fit-mask-folder-empty", fit_empty_mask, FIT, 2),
    ("fit-overwrite-into-the-data-folder", fit_copy,
     [*FIT_PAIRS, "--out", ".", "--overwrite", *FIT_FAST], 2),
    ("fit-class-names-repeated", fit_copy, [*FIT, "--class-names", "background,bone,bone"], 2),
    ("fit-class-names-clash-as-files", fit_copy, [*FIT, "--class-names", "background,bone 1,bone/1"],
     2),
    # -- bone synth
    ("synth-overwrite-into-a-folder-of-user-files", user_files_for_synth,
     ["synth", "data", "--scans", "1", "--shape", "4", "32", "32", "--overwrite"], 2),
]


# ----------------------------------------------------------------------------------------------
# The contract


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (hidden ones and links too): file hash, 'dir' or the link's target."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def restore_permissions(root: Path) -> None:
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            (Path(folder) / name).chmod(0o755)


@pytest.mark.parametrize(("setup", "argv", "code"),
                         [pytest.param(setup, argv, code, id=name)
                          for name, setup, argv, code in CATALOGUE])
def test_attack(setup, argv, code, shared, tmp_path, monkeypatch, capsys):
    d = tmp_path / "work"
    d.mkdir()
    setup(d, shared)
    before = snapshot(d)
    monkeypatch.chdir(d)
    argv = [a.format(weights=shared.weights) for a in argv]
    try:
        got = bone(argv)
    finally:
        restore_permissions(d)
    out, err = capsys.readouterr()
    after = snapshot(d)
    assert "Traceback" not in err, err
    if code == 0:
        assert got == 0, err
        assert out.strip(), "a success says what it did"
    else:
        assert got == 2, (got, out, err)
        assert err.count("\n") == 1 and err.strip() and err.startswith(f"bone {argv[0]}: "), err
        assert after == before, "a refusal leaves the folder as it was"
    assert {name: after.get(name) for name in before} == before, "a user's file changed"
    assert not [n for n in after if ".partial-" in n or n.endswith(".lock") or ".old-" in n]
    assert not [t for t in threading.enumerate() if t.name.startswith("bone-")]


def test_the_catalogue_is_complete():
    names = [name for name, *_ in CATALOGUE]
    assert len(names) == len(set(names)) and len(names) >= 40


# ----------------------------------------------------------------------------------------------
# The same attacks met earlier: before the statistics, and in the DLFit window's pair check


def test_a_refused_output_costs_no_statistics(shared, tmp_path, monkeypatch, capsys):
    """Outputs are checked before the minutes of intensity statistics, not after them."""
    import bone_apps.core.data.normalize as normalize

    def never(*_args, **_kwargs):
        raise AssertionError("statistics were computed before the outputs were checked")

    monkeypatch.setattr(normalize, "compute_stats_many", never)
    scan_and_user_file(tmp_path, shared)
    before = snapshot(tmp_path)
    for extra in (["--out", str(tmp_path)], ["--out", str(tmp_path / "labels"), "--report",
                                             str(tmp_path / "results.json")]):
        code = bone(["predict", str(tmp_path / "scan"), "--weights", str(shared.weights),
                     *extra, "--overwrite", *FAST])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "bone_apps did not write" in err or "not written by bone_apps" in err, err
    assert snapshot(tmp_path) == before


def test_the_report_is_tagged_and_replaced_only_when_ours(shared, tmp_path, capsys):
    scan(tmp_path)
    argv = ["predict", str(tmp_path / "scan"), "--weights", str(shared.weights), "--out",
            str(tmp_path / "labels"), "--report", str(tmp_path / "new" / "report.json"), *FAST]
    assert bone(argv) == 0
    import json

    report = json.loads((tmp_path / "new" / "report.json").read_text())
    assert report["written_by"].startswith("bone_apps") and report["scans"]
    assert report["config"]["report"] == str(tmp_path / "new" / "report.json")
    assert bone([*argv, "--overwrite"]) == 0  # ours: replaced
    capsys.readouterr()
    assert bone(argv) == 2 and "already exists" in capsys.readouterr().err


def check_pair(scan_path: Path, mask_path: Path, class_count: int | None = None):
    from collections import deque

    from bone_apps.dlfit.pair_check import check_queue

    queue = deque([(0, str(scan_path), str(mask_path), class_count)])
    return list(check_queue(queue, threading.Event()))[-1]


def test_pair_check_flags_0_255_masks_as_mapped(shared, tmp_path):
    mask = revalue(shared.copy("masks/bone_00", tmp_path), (0, 255, 255))
    check = check_pair(shared.data / "scans" / "bone_00", mask)
    assert not check.problem and check.mapped and check.labels == [0, 255]
    assert "values 0, 255 will be mapped to classes 0..1" in check.warning
    assert check.summary().startswith("⚠ 16×64×64 · uint16 · values 0, 255 will be mapped")
    assert "Voxels per value: 0: " in check.details()
    named = check_pair(shared.data / "scans" / "bone_00", mask, class_count=2)
    assert not named.problem and named.mapped and "2 values, one per named class" in named.warning
    plain = check_pair(shared.data / "scans" / "bone_00", shared.data / "masks" / "bone_00")
    assert not plain.problem and not plain.warning and plain.labels == [0, 1, 2]
    assert "classes 0,1,2" in plain.summary()
    too_few_names = check_pair(shared.data / "scans" / "bone_00", shared.data / "masks" / "bone_00", 2)
    assert "label(s) 2" in too_few_names.problem


def test_pair_check_refuses_a_scan_given_as_the_mask(shared):
    scan_path = shared.data / "scans" / "bone_00"
    check = check_pair(scan_path, scan_path)
    assert "this looks like a scan, not a label mask" in check.problem
    assert check.done and check.summary().startswith("✖ the mask holds at least")
    assert len(check.problem) < 300
