"""Every volume format, wherever a scan or mask is accepted: OME-Zarr (0.4 and 0.5), NIfTI and
HDF5 files written by their own libraries are read, fitted on, predicted, scored and written
back like TIFF, and give the same labels; bad files are one sentence; --overwrite never touches
a volume bone_apps did not write.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image
from test_predict import make_weights

from bone_apps.cli import main
from bone_apps.core.data.synthetic import make_sample_scan
from bone_apps.core.errors import VolumeError
from bone_apps.core.io import formats
from bone_apps.core.io.volume import open_volume, volume_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (16, 64, 64)
UNITS = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
# Each format under a name of its own (ids differ, so one run predicts them all).
KINDS = ("tiff", "z04", "z05", "gz", "nii", "h5")
# A NIfTI scan placed obliquely in the world: 30 degrees about k, and off the origin.
_TURN = np.deg2rad(30)
ROTATION = np.array([[np.cos(_TURN), -np.sin(_TURN), 0], [np.sin(_TURN), np.cos(_TURN), 0], [0, 0, 1]])
ORIGIN = np.array([-10.0, 5.0, 2.5])


def nifti_affine(voxel) -> np.ndarray:
    """The scan's affine: voxel (i, j, k) = (x, y, z) in millimetres, turned and moved."""
    affine = np.eye(4)
    affine[:3, :3] = ROTATION @ np.diag([voxel.x, voxel.y, voxel.z]) / 1e3
    affine[:3, 3] = ORIGIN
    return affine


def write_with_libraries(folder: Path, name: str, array: np.ndarray, voxel,
                         chunks: tuple[int, int, int] = (4, 32, 32)) -> dict[str, Path]:
    """The same (Z, Y, X) array written by each format's own library (never by bone_apps);
    chunks four slices deep: slabs and single slices are read across chunk borders."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    tiffs = folder / f"{name}_tiff"
    tiffs.mkdir()
    for z, plane in enumerate(array):
        tifffile.imwrite(tiffs / f"{name}_{z:04d}.tif", plane, resolution=(1e4 / voxel.x, 1e4 / voxel.y),
                         resolutionunit="CENTIMETER", metadata={"spacing": voxel.z / 1e4, "unit": "cm"})
    paths["tiff"] = tiffs
    for kind, fmt in (("z04", FormatV04()), ("z05", FormatV05())):
        store = folder / f"{name}_{kind}.ome.zarr"
        group = zarr.open_group(str(store), mode="w", zarr_format=fmt.zarr_format)
        write_image(array, group, axes="zyx", fmt=fmt, scale_factors=(2,), axes_units=UNITS,
                    scale={"z": voxel.z, "y": voxel.y, "x": voxel.x}, storage_options={"chunks": chunks})
        paths[kind] = store
    image = nib.Nifti1Image(array.transpose(2, 1, 0), nifti_affine(voxel))  # (i, j, k) = (x, y, z)
    image.header.set_xyzt_units("mm")
    for kind, suffix in (("gz", ".nii.gz"), ("nii", ".nii")):
        paths[kind] = folder / f"{name}_{kind}{suffix}"
        nib.save(image, paths[kind])
    paths["h5"] = folder / f"{name}_h5.h5"
    with h5py.File(paths["h5"], "w") as handle:
        data = handle.create_dataset("entry/data", data=array, chunks=chunks, compression="gzip")
        data.attrs["element_size_um"] = [voxel.z, voxel.y, voxel.x]
    return paths


def hashes(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) and its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, err
    return err


def labels_of(path) -> np.ndarray:
    volume = open_volume(path, role="mask")
    return volume.read_slab(0, volume.shape[0])


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    """Keep the statistics cache out of the user's home."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sample():
    return make_sample_scan(SHAPE, np.random.default_rng(7), name="femur", bits=16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """ROOT/scans and ROOT/masks holding the same scan and mask in every format."""
    root = tmp_path_factory.mktemp("formats")
    scans = write_with_libraries(root / "scans", "femur", sample.scan, sample.voxel_size)
    masks = write_with_libraries(root / "masks", "femur", sample.mask, sample.voxel_size)
    return root, scans, masks


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "model.pth", "2d", seed=1)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, dataset, weights) -> Path:
    """One `bone predict --data` run over the scan in every format: OUT/<id> in each one's kind."""
    root, _, _ = dataset
    out = tmp_path_factory.mktemp("predicted") / "labels"
    cache = tmp_path_factory.mktemp("cache")
    os.environ["BONE_APPS_CACHE"] = str(cache)
    try:
        assert main(["predict", "--data", str(root), "--weights", str(weights), "--out", str(out),
                     "--device", "cpu", "--chunk", "64", "--overlap", "0"]) == 0
    finally:
        del os.environ["BONE_APPS_CACHE"]
    return out


# ----------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_the_voxels_and_voxel_size_and_survives_pickling(dataset, sample, kind):
    _, scans, masks = dataset
    scan, mask = open_volume(scans[kind]), open_volume(masks[kind], role="mask")
    assert scan.shape == SHAPE and scan.dtype == sample.scan.dtype and mask.dtype == np.uint8
    assert np.array_equal(scan.read_slab(0, 16), sample.scan)
    assert np.array_equal(scan.read_slab(3, 9), sample.scan[3:9])  # across chunk borders
    assert all(np.array_equal(scan.read_slice(z), sample.scan[z]) for z in (15, 0, 5, 4))
    assert np.array_equal(np.stack(list(mask.iter_slices())), sample.mask)
    voxel = sample.voxel_size
    assert (scan.voxel_size.z, scan.voxel_size.y, scan.voxel_size.x) == pytest.approx(
        (voxel.z, voxel.y, voxel.x), rel=1e-5)
    mapped = scan.memmap_slice(6)  # None where the file cannot be mapped: callers read slices
    assert mapped is None or np.array_equal(mapped, sample.scan[6])
    assert (mapped is not None) == (kind in ("tiff", "nii"))
    clone = pickle.loads(pickle.dumps(scan))  # what worker processes get: they reopen the file
    assert np.array_equal(clone.read_slice(7), sample.scan[7])
    assert volume_id(scans[kind]) == f"femur_{kind}"


def test_hdf5_dataset_path_ome_zarr_levels_and_ids():
    assert formats.split_hdf5("run/a.h5:/entry/data") == (Path("run/a.h5"), "/entry/data")
    assert formats.split_hdf5("run/a.tif") == (Path("run/a.tif"), None)
    for name in ("femur.ome.zarr", "femur.zarr", "femur.nii.gz", "femur.nii", "femur.h5", "femur.hdf5",
                 "femur.h5:/entry/data", "femur.ome.zarr/0", "femur.ome.tif", "femur"):
        assert volume_id(Path("data") / name) == "femur", name
    names = ("a", "a.tif", "a.nii", "a.nii.gz", "a.h5:/x", "a.ome.zarr/0")
    assert [formats.own_suffix(n) for n in names] == ["", ".tif", ".nii", ".nii.gz", ".h5", ".ome.zarr"]


@pytest.fixture(scope="module")
def ramps(tmp_path_factory, sample) -> dict[int, tuple[np.ndarray, dict[str, Path]]]:
    """A 256x256 ramp 16 and 64 slices long, in every format."""
    found = {}
    for slices in (16, 64):
        ramp = (np.arange(slices * 256 * 256) % 65521).astype(np.uint16).reshape(slices, 256, 256)
        folder = tmp_path_factory.mktemp(f"ramp{slices}")
        found[slices] = ramp, write_with_libraries(folder, "ramp", ramp, sample.voxel_size, (4, 256, 256))
        for path in found[slices][1].values():  # readers' thread pools start here, not in a test
            open_volume(path).read_slab(0, slices)
    return found


def test_reading_in_order_holds_one_slab_whatever_the_length(ramps):
    """Memory while reading every slice stays flat in the number of slices, in every format."""
    import tracemalloc

    peaks = {}
    for slices, (ramp, paths) in ramps.items():
        for kind, path in paths.items():
            with open_volume(path) as volume:
                volume.read_slice(0)  # opened before measuring
                tracemalloc.start()
                total = sum(int(plane[0, 0]) for plane in volume.iter_slices())
                peaks[kind, slices] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            assert total == sum(int(v) for v in ramp[:, 0, 0]), kind
    stack = ramps[64][0].nbytes
    for kind in KINDS:
        assert peaks[kind, 64] < stack / 2, (kind, peaks)  # a slab and the readers' buffers
        assert peaks[kind, 64] < 1.5 * peaks[kind, 16] + (1 << 20), (kind, peaks)  # flat


def test_slices_read_in_order_are_views_and_at_random_copies(dataset, sample):
    _, scans, _ = dataset
    volume = open_volume(scans["z04"])  # chunks 4 slices deep
    first = volume.read_slice(0)
    assert not first.flags.writeable and np.array_equal(first, sample.scan[0])
    late = volume.read_slice(13)  # out of order: its own copy, not a view of a slab
    assert late.flags.writeable and np.array_equal(late, sample.scan[13])
    out = np.empty(SHAPE[1:], np.uint16)
    assert volume.read_slice(14, out=out) is out and np.array_equal(out, sample.scan[14])


def test_levels_are_chosen_by_number_or_by_their_path(dataset, sample):
    _, scans, _ = dataset
    for kind in ("z04", "z05"):
        store = scans[kind]
        coarse = open_volume(formats.at_level(store, 1))
        assert coarse.path == store / "s1" and coarse.shape == (16, 32, 32)
        assert (coarse.voxel_size.y, coarse.voxel_size.x) == pytest.approx(
            (2 * sample.voxel_size.y, 2 * sample.voxel_size.x))
        assert np.array_equal(open_volume(store / "s0").read_slab(0, 16), sample.scan)
        assert formats.at_level(store / "s1", 0) == store / "s0"  # counted from the image
        with pytest.raises(VolumeError, match="has 2 resolution levels"):
            formats.at_level(store, 2)
    assert formats.at_level(scans["nii"], 0) == scans["nii"]
    with pytest.raises(VolumeError, match="one resolution level"):
        formats.at_level(scans["h5"], 1)
    from bone_apps.core.data.pairs import pairs_from_paths, with_level

    (pair,) = with_level(pairs_from_paths([(scans["z05"], scans["z04"])]), 1)
    assert (pair.id, pair.scan, pair.mask) == ("femur_z05", scans["z05"] / "s1", scans["z04"] / "s1")


def test_fitting_patches_are_the_same_from_every_format(dataset):
    """The fit sampler memory-maps what it can and reads the other formats' slices: the
    patches (and so the fit) do not depend on the format."""
    from bone_apps.core.data.augment import AugmentConfig
    from bone_apps.core.data.normalize import compute_stats
    from bone_apps.core.data.sampling import Dims, PatchBatches, PatchLayout, ScanSource

    _, scans, masks = dataset
    layout = PatchLayout(Dims.D25, patch=32, patches_per_tile=2, max_overlap=0.5, context=1)
    batches = {}
    for kind in KINDS:
        stats = compute_stats(open_volume(scans[kind]))
        source = ScanSource("femur", scans[kind], masks[kind], SHAPE, stats)
        data = PatchBatches([source], layout, "zscore", batch=8, seed=3, train=True,
                            augment=AugmentConfig())
        batches[kind] = [data[(0, b)] for b in range(2)]
    for kind in KINDS:
        for (image, mask), (ref_image, ref_mask) in zip(batches[kind], batches["tiff"]):
            assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask), kind


# ----------------------------------------------------------------------------------------------
# Predicting and scoring


def test_the_same_scan_in_every_format_gives_identical_labels(predicted, dataset):
    forms = {"tiff": "femur_tiff", "z04": "femur_z04.ome.zarr", "z05": "femur_z05.ome.zarr",
             "gz": "femur_gz.nii.gz", "nii": "femur_nii.nii", "h5": "femur_h5.h5"}
    assert sorted(p.name for p in predicted.iterdir()) == sorted(forms.values())
    reference = labels_of(predicted / forms["tiff"])
    assert len(np.unique(reference)) >= 2  # a test that cannot pass with empty labels
    for kind, name in forms.items():
        assert np.array_equal(labels_of(predicted / name), reference), kind
    # Read back with the formats' own libraries, not bone_apps.
    assert np.array_equal(zarr.open_array(str(predicted / forms["z04"] / "0"), mode="r")[:], reference)
    assert np.array_equal(zarr.open_array(str(predicted / forms["z05"] / "0"), mode="r")[:], reference)
    assert np.array_equal(np.asarray(nib.load(predicted / forms["gz"]).dataobj).transpose(2, 1, 0), reference)
    voxel = open_volume(dataset[1]["h5"]).voxel_size
    with h5py.File(predicted / forms["h5"], "r") as handle:
        assert np.array_equal(handle["data"][:], reference)
        assert list(handle["data"].attrs["element_size_um"]) == pytest.approx([voxel.z, voxel.y, voxel.x])


def test_scores_are_the_same_in_every_format(predicted, dataset, tmp_path):
    _, _, masks = dataset
    outputs = {"tiff": "femur_tiff", "z04": "femur_z04.ome.zarr", "z05": "femur_z05.ome.zarr",
               "gz": "femur_gz.nii.gz", "h5": "femur_h5.h5"}
    scores = {}
    for kind, name in outputs.items():
        target = tmp_path / f"{kind}.json"
        mask = f"{masks[kind]}:/entry/data" if kind == "h5" else str(masks[kind])
        assert main(["iou", mask, str(predicted / name), "--json", str(target), "--device", "cpu"]) == 0
        scores[kind] = json.loads(target.read_text())
    for kind in outputs:
        assert scores[kind]["classes"] == scores["tiff"]["classes"], kind
        assert scores[kind]["mean_iou"] == scores["tiff"]["mean_iou"]


def test_nifti_outputs_keep_the_scans_affine_and_header(predicted, dataset):
    _, scans, _ = dataset
    for kind, name in (("gz", "femur_gz.nii.gz"), ("nii", "femur_nii.nii")):
        scan, labels = nib.load(scans[kind]), nib.load(predicted / name)
        assert np.allclose(labels.affine, scan.affine) and np.allclose(labels.affine[:3, 3], ORIGIN)
        for field in ("sform_code", "qform_code", "xyzt_units", "pixdim", "srow_x", "srow_y", "srow_z",
                      "quatern_b", "quatern_c", "quatern_d"):
            assert np.array_equal(labels.header[field], scan.header[field]), field
        assert labels.shape == (64, 64, 16) and labels.get_data_dtype() == np.uint8
        assert formats.file_is_ours(predicted / name) and not formats.file_is_ours(scans[kind])


def test_ome_zarr_outputs_are_valid_pyramids(predicted, dataset, sample):
    from ome_zarr_models import open_ome_zarr

    for name, version in (("femur_z04.ome.zarr", "0.4"), ("femur_z05.ome.zarr", "0.5")):
        store = predicted / name
        model = open_ome_zarr(zarr.open_group(str(store), mode="r"))  # validates the metadata
        assert type(model).__module__.startswith(f"ome_zarr_models.v0{version[-1]}")
        found = formats.read_multiscales(store)
        assert found[1] == version
        datasets = found[0]["datasets"]
        assert [d["path"] for d in datasets] == ["0", "1"]
        scales = [d["coordinateTransformations"][0]["scale"] for d in datasets]
        voxel = sample.voxel_size
        assert scales[0] == pytest.approx([voxel.z, voxel.y, voxel.x])
        assert scales[1] == pytest.approx([2 * voxel.z, 2 * voxel.y, 2 * voxel.x])
        assert [a["unit"] for a in found[0]["axes"]] == ["micrometer"] * 3
        level0 = zarr.open_array(str(store / "0"), mode="r")[:]
        assert np.array_equal(zarr.open_array(str(store / "1"), mode="r")[:], level0[::2, ::2, ::2])
        assert (store / ".bone_apps.json").is_file()


def test_labels_join_the_ome_zarr_scans_labels_group(dataset, weights, predicted, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    from bone_apps.core.io.formats.zarr import labels_listed

    _, scans, _ = dataset
    common = ["--weights", str(weights), "--device", "cpu", "--chunk", "64", "--overlap", "0"]
    for kind in ("z04", "z05"):
        image = tmp_path / scans[kind].name
        shutil.copytree(scans[kind], image)
        before = hashes(image)
        assert main(["predict", str(image), "--out", str(image / "labels" / "bone"), *common]) == 0
        # Level 1 of the image: those labels lie on that level's grid.
        assert main(["predict", str(image), "--level", "1", "--out", str(image / "labels" / "coarse"),
                     *common]) == 0
        after = hashes(image)
        assert {k: v for k, v in after.items() if not k.startswith("labels")} == before  # the rest untouched
        assert labels_listed(image) == ["bone", "coarse"]
        assert np.array_equal(labels_of(image / "labels" / "bone"), labels_of(predicted / image.name))
        member = formats.read_multiscales(image / "labels" / "bone")[0]
        image_levels = formats.read_multiscales(image)[0]["datasets"]
        assert member["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(
            image_levels[0]["coordinateTransformations"][0]["scale"])
        coarse = formats.read_multiscales(image / "labels" / "coarse")[0]["datasets"][0]
        assert coarse["coordinateTransformations"] == image_levels[1]["coordinateTransformations"]
        assert open_volume(image / "labels" / "coarse", role="mask").shape == (16, 32, 32)
        attrs = formats.zarr_attributes(image / "labels" / "bone")
        assert "image-label" in (attrs.get("ome", attrs))
        # The reference reader (what napari's OME-Zarr plugin uses) finds both label images.
        nodes = list(Reader(parse_url(str(image)))())
        assert sum(1 for node in nodes if node.load(Label)) == 2
        # A second run on the same labels replaces only our own member, with --overwrite.
        assert main(["predict", str(image), "--out", str(image / "labels" / "bone"), *common,
                     "--overwrite"]) == 0
        assert labels_listed(image) == ["bone", "coarse"]
        assert {k: v for k, v in hashes(image).items() if not k.startswith("labels")} == before


def test_outputs_take_the_kind_the_out_name_or_format_asks_for(dataset, sample, weights, tmp_path, capsys):
    root, scans, _ = dataset
    common = ["--weights", str(weights), "--device", "cpu", "--chunk", "64", "--overlap", "0"]
    assert main(["predict", str(scans["tiff"]), "--out", str(tmp_path / "a.ome.zarr"), *common]) == 0
    assert main(["predict", str(scans["z05"]), "--out", str(tmp_path / "b.nii.gz"), *common]) == 0
    converted = nib.load(tmp_path / "b.nii.gz")  # from a scan that had no affine: its voxel size
    voxel = sample.voxel_size
    assert np.allclose(converted.affine, np.diag([voxel.x / 1e3, voxel.y / 1e3, voxel.z / 1e3, 1]))
    assert main(["predict", str(scans["tiff"]), str(scans["gz"]), "--format", "hdf5", "--out",
                 str(tmp_path / "many"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["femur_gz.h5", "femur_tiff.h5"]
    labels = labels_of(tmp_path / "a.ome.zarr")
    many = tmp_path / "many"
    for path in (tmp_path / "b.nii.gz", many / "femur_gz.h5", many / "femur_tiff.h5"):
        assert np.array_equal(labels_of(path), labels), path
    cases = [
        ([str(scans["z04"]), "--out", str(tmp_path / "plain")], "ending in .ome.zarr"),
        ([str(scans["gz"]), "--out", str(tmp_path / "plain")], "ending in .nii.gz"),
        ([str(scans["tiff"]), "--format", "nifti", "--out", str(tmp_path / "plain")], "ending in .nii.gz"),
        ([str(scans["tiff"]), "--format", "zarr", "--out", str(tmp_path / "c.h5")], "does not match"),
        ([str(scans["tiff"]), "--out", f"{tmp_path / 'd.h5'}:/seg"], "HDF5 file alone"),
        ([str(scans["z04"]), "--out", str(scans["z04"] / "inner.ome.zarr")], "inside the scan folder"),
        ([str(scans["z04"]), "--out", str(scans["z04"] / "labels" / "x"), "--probabilities"],
         "labels, not probability maps"),
    ]
    for argv, text in cases:
        assert main(["predict", *argv, *common]) == 2, argv
        one_line(capsys, text)
    assert not (tmp_path / "plain").exists() and not (scans["z04"] / "labels").exists()


def test_predict_names_an_hdf5_dataset_by_its_path(dataset, weights, tmp_path):
    _, scans, _ = dataset
    assert main(["predict", f"{scans['h5']}:/entry/data", "--weights", str(weights), "--device", "cpu",
                 "--out", str(tmp_path / "labels.h5"), "--chunk", "64", "--overlap", "0"]) == 0
    assert open_volume(tmp_path / "labels.h5", role="mask").shape == SHAPE


# ----------------------------------------------------------------------------------------------
# Datasets


def test_dataset_roots_list_and_pair_every_format(dataset, tmp_path):
    from bone_apps.core.data.pairs import check_pairs, pairs_from_root
    from bone_apps.core.io.stack_kind import label_stack_reason
    from bone_apps.core.io.writer import write_volume
    from bone_apps.core.predict.output_plan import scans_in

    root, scans, masks = dataset
    mixed = tmp_path / "mixed"
    (mixed / "scans").mkdir(parents=True)
    (mixed / "masks").mkdir()
    # Each scan paired with a mask of another format, matched on the name alone.
    for scan, mask, name in (("z04", "h5", "a"), ("gz", "z05", "b"), ("h5", "tiff", "c")):
        for source, folder in ((scans[scan], "scans"), (masks[mask], "masks")):
            suffix = source.name[len(f"femur_{scan if folder == 'scans' else mask}"):]
            copy = mixed / folder / f"{name}{suffix}"
            (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    # Prediction outputs bone_apps wrote inside the dataset are neither scans nor masks.
    labels = open_volume(masks["tiff"], role="mask").read_slab(0, 16)
    for name in ("a_labels.ome.zarr", "b_labels.nii.gz", "c_labels.h5"):
        write_volume(mixed / "scans" / name, labels)
    notes: list[str] = []
    pairs = pairs_from_root(mixed, notes)
    assert [(p.id, p.scan.name, p.mask.name) for p in pairs] == [
        ("a", "a.ome.zarr", "a.h5"), ("b", "b.nii.gz", "b.ome.zarr"), ("c", "c.h5", "c")]
    assert "skipped 3 prediction output(s)" in notes[0]
    summary = check_pairs(pairs, workers=1)
    assert [info.shape for info in summary.infos] == [SHAPE] * 3 and summary.classes == 3
    assert [p.name for p in scans_in(root)] == [scans[k].name for k in
                                                ("gz", "h5", "nii", "tiff", "z04", "z05")]
    mask = open_volume(f"{mixed / 'masks' / 'a.h5'}:/entry/data", role="mask")
    assert "masks/ folder" in label_stack_reason(mask)


# ----------------------------------------------------------------------------------------------
# Bad files and users' files


def _bad_files(folder: Path, dataset) -> list[tuple[list[str], str, Path]]:
    """(iou arguments, what the one line must say, the file it must name) for files a user may
    bring."""
    _, scans, masks = dataset
    good = str(masks["tiff"])
    four_h5 = folder / "four.h5"
    with h5py.File(four_h5, "w") as handle:
        handle["t"] = np.zeros((2, *SHAPE), np.uint8)
    four_nii = folder / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 16, 2), np.uint8), np.eye(4)), four_nii)
    channels = folder / "channels.ome.zarr"
    write_image(np.zeros((2, *SHAPE), np.uint8), zarr.open_group(str(channels), mode="w", zarr_format=2),
                axes="czyx", fmt=FormatV04(), scale_factors=())
    broken = folder / "broken.ome.zarr"
    shutil.copytree(masks["z04"], broken)
    (broken / "s0" / "2" / "0" / "0").write_bytes(b"not a chunk at all")
    cut = folder / "cut.nii.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(masks["gz"].read_bytes())[:20000]))
    empty = folder / "empty.ome.zarr"
    empty.mkdir()
    fake = folder / "fake.h5"
    fake.write_bytes(b"these are not HDF5 bytes" * 10)
    two = folder / "two.h5"
    with h5py.File(two, "w") as handle:
        handle["a"], handle["b"] = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    cases = [
        ([good, f"{masks['h5']}:/entry/nothing"], "has no dataset /entry/nothing (it holds /entry/data)"),
        ([good, f"{masks['h5']}:/entry"], "is a group, not a dataset"),
        ([good, str(two)], "holds 2 datasets (/a, /b): name the one to use"),
        ([good, str(four_h5)], "holds 4D data"),
        ([good, str(four_nii)], "holds 4D data"),
        ([good, str(channels)], "holds 2 channels"),
        ([good, str(broken)], "slices 9 to 12 of"),
        ([good, str(cut)], "cut short"),
        ([good, str(empty)], "is not a Zarr store"),
        ([good, str(fake)], "is not a readable HDF5 file"),
        ([str(masks["z05"]), str(masks["z04"]), "--level", "3"], "has 2 resolution levels"),
    ]
    return [(argv, text, formats.location(argv[0] if "--level" in argv else argv[1])) for argv, text in cases]


def test_each_bad_file_is_one_sentence_naming_it_with_exit_code_2(dataset, tmp_path, capsys):
    for argv, text, named in _bad_files(tmp_path, dataset):
        assert main(["iou", *argv, "--device", "cpu"]) == 2, argv
        one_line(capsys, text, str(named))


def test_overwrite_never_replaces_volumes_bone_apps_did_not_write(dataset, weights, tmp_path, capsys):
    _, scans, masks = dataset
    outs = tmp_path / "outs"
    voxel = open_volume(scans["tiff"]).voxel_size
    user = write_with_libraries(outs, "mine", np.zeros(SHAPE, np.uint8), voxel)
    image = tmp_path / "image.ome.zarr"
    shutil.copytree(scans["z05"], image)
    seg = image / "labels" / "seg"  # a labels image the user made in another program
    write_image(np.ones(SHAPE, np.uint8), zarr.open_group(str(seg), mode="w", zarr_format=3), axes="zyx",
                fmt=FormatV05(), scale_factors=())
    before = {**hashes(outs), **{f"image/{k}": v for k, v in hashes(image).items()}}
    common = ["--weights", str(weights), "--device", "cpu", "--chunk", "64", "--overlap", "0",
              "--overwrite"]
    for scan, out in ((scans["z04"], user["z04"]), (scans["z05"], user["z05"]), (scans["gz"], user["gz"]),
                      (scans["nii"], user["nii"]), (scans["h5"], user["h5"]), (image, seg)):
        assert main(["predict", str(scan), "--out", str(out), *common]) == 2, out
        err = one_line(capsys, str(out))
        assert "bone_apps did not write" in err or "not written by bone_apps" in err, err
    assert {**hashes(outs), **{f"image/{k}": v for k, v in hashes(image).items()}} == before
    # Outputs bone_apps wrote are replaced.
    from bone_apps.core.io.writer import write_volume

    for name in ("ours.ome.zarr", "ours.nii.gz", "ours.h5"):
        write_volume(tmp_path / name, np.full(SHAPE, 7, np.uint8))
        assert main(["predict", str(scans["tiff"]), "--out", str(tmp_path / name), *common]) == 0
        assert formats.is_ours(tmp_path / name) and labels_of(tmp_path / name).max() < 7
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["0.4", "0.5"])
def test_uncompressed_ome_zarr_slices_are_read_straight_from_their_chunk_files(fmt, tmp_path, ramps):
    """Raw one-slice chunks are read like uncompressed TIFF slices (and memory-mapped for fitting);
    an absent chunk reads as the fill value and a cut-short one is named in one sentence.
    (`ramps` has started zarr's thread pools, which outlive any one test.)"""
    scan = make_sample_scan((6, 48, 40), np.random.default_rng(3), bits=16).scan
    store = tmp_path / "raw.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=fmt.zarr_format)
    options = {"chunks": (1, 48, 40), **({"compressor": None} if fmt.zarr_format == 2 else
                                          {"compressors": None})}
    write_image(scan, group, axes="zyx", fmt=fmt, scale_factors=(), storage_options=options)
    volume = open_volume(store)
    assert volume.raw_chunk is not None
    assert all(np.array_equal(volume.read_slice(z), scan[z]) for z in range(6))
    assert np.array_equal(volume.memmap_slice(2), scan[2])
    assert np.array_equal(pickle.loads(pickle.dumps(volume)).read_slab(0, 6), scan)
    chunk = volume.array_path / volume.raw_chunk.format(z=4)
    chunk.unlink()
    assert not open_volume(store).read_slice(4).any()  # zarr's fill value
    chunk = volume.array_path / volume.raw_chunk.format(z=5)
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(VolumeError, match=r"^slice 6 of .*raw.ome.zarr is cut short .*re-export it.$"):
        open_volume(store).read_slice(5)
    compressed = tmp_path / "zstd.ome.zarr"
    group = zarr.open_group(str(compressed), mode="w", zarr_format=fmt.zarr_format)
    write_image(scan, group, axes="zyx", fmt=fmt, scale_factors=(), storage_options={"chunks": (1, 48, 40)})
    assert open_volume(compressed).raw_chunk is None  # zarr decodes it
