"""The napari plugin and the core it stands on.

Core (runs without napari): `segment_array` gives an array the labels `bone predict` writes for
the same voxels saved as a scan, and `ArrayVolume` reads arrays as scans and masks.
Plugin (skipped without napari): the npe2 manifest; its reader opens every format open_volume
reads, lazily, with the voxel size as scale; the "Segment bone" and "Score labels (IoU)"
widgets run core off the GUI thread and put their results into the viewer.

napari's canvas needs OpenGL, which Qt's offscreen platform lacks: the widgets are tested on a
napari ViewerModel (napari's viewer without its canvas: the same layers and events), and
napari's own `make_napari_viewer` fixture checks that a real viewer docks both widgets from
the manifest.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import make_weights

from bone_apps.core.data.synthetic import make_sample_scan
from bone_apps.core.errors import (
    Cancelled,
    LabelError,
    PredictConfigError,
    VolumeError,
    WeightsError,
)
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume
from bone_apps.core.jobs.run import run_to_end
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.reports import SliceProgress
from bone_apps.core.predict.segment import run_predict
from bone_apps.core.predict.segment_array import ArrayVolume, SegmentStarted, segment_array

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (16, 64, 64)
MANIFEST = Path(__file__).resolve().parent.parent / "bone_apps" / "napari_plugin" / "napari.yaml"


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    """Keep the statistics cache out of the user's home."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sample():
    return make_sample_scan(SHAPE, np.random.default_rng(3), name="femur", bits=16)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {dims: make_weights(folder / f"{dims}.pth", dims, seed=2) for dims in ("2d", "2.5d", "3d")}


def weights_with_values(path: Path, values: list[int]) -> Path:
    """A 2D model whose masks held `values` (written back in place of class indices)."""
    from bone_apps.core.model.models import build_model, required_multiple
    from bone_apps.core.model.weights import save_weights

    torch.manual_seed(2)
    model = build_model("2d", "Unet", "resnet18", 1, len(values))
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1,
            "classes": len(values), "class_names": ["background", "bone", "pores"][:len(values)],
            "label_values": values, "patch_size": 64, "context": 0, "patch_depth": 1, "norm": "zscore",
            "required_multiple": required_multiple(model, "2d"), "fit_config": {"epochs": 0}, "metrics": {}}
    return save_weights(path, model, meta)


def predicted_file(scan: Path, weights_file: Path, out: Path, **options) -> np.ndarray:
    """What `bone predict` writes for a scan file."""
    run_predict(PredictConfig(scans=(scan,), weights=weights_file, out=out, device="cpu", stats_workers=1,
                              **options))
    volume = open_volume(out, role="mask")
    return volume.read_slab(0, volume.shape[0])


# ----------------------------------------------------------------------------------------------
# Core: segment_array and ArrayVolume (no napari)


@pytest.mark.parametrize("dims", ["2d", "2.5d", "3d"])
def test_segment_array_gives_the_labels_bone_predict_writes_for_the_same_scan(
        sample, weights, tmp_path, dims):
    scan = write_volume(tmp_path / "femur", sample.scan, voxel_size=sample.voxel_size)
    expected = predicted_file(scan, weights[dims], tmp_path / "labels")
    records = []
    result = run_to_end(segment_array(sample.scan, weights[dims], name="femur", device="cpu"),
                        records.append)
    assert result.labels.shape == SHAPE and result.labels.dtype == np.uint8
    assert np.array_equal(result.labels, expected)
    assert result.counts == tuple(np.bincount(expected.ravel(), minlength=3))
    assert sum(1 for c in result.counts if c) >= 2  # a real segmentation, not one class
    assert result.class_names == ("background", "bone", "pores") and result.label_values == (0, 1, 2)
    assert "512 px chunks" in result.settings and "normalization: zscore" in result.model
    assert isinstance(records[0], SegmentStarted) and records[0].shape == SHAPE
    done = [r.done for r in records if isinstance(r, SliceProgress)]
    assert done == list(range(SHAPE[0] + 1))


def test_segment_array_writes_the_mask_values_the_model_was_fitted_on(sample, tmp_path):
    weights_file = weights_with_values(tmp_path / "values.pth", [0, 128, 255])
    scan = write_volume(tmp_path / "femur.tif", sample.scan, voxel_size=sample.voxel_size)
    expected = predicted_file(scan, weights_file, tmp_path / "labels.tif", threshold=0.0, chunk=64)
    result = run_to_end(segment_array(sample.scan, weights_file, device="cpu", threshold=0.0, chunk=64))
    assert set(np.unique(result.labels)) <= {0, 128, 255} and len(np.unique(result.labels)) >= 2
    assert np.array_equal(result.labels, expected)
    assert result.label_values == (0, 128, 255) and "64 px chunks" in result.settings


def test_segment_array_takes_lazy_arrays_other_types_and_single_slices(sample, weights):
    reference = run_to_end(segment_array(sample.scan.astype(np.float32), weights["2d"], device="cpu"))

    class Lazy:  # only what viewers' lazy arrays offer: shape, dtype and slicing
        shape, dtype = sample.scan.shape, np.dtype(np.float64)
        reads: list = []

        def __getitem__(self, key):
            self.reads.append(key)
            return sample.scan[key].astype(np.float64)

    lazy = Lazy()
    result = run_to_end(segment_array(lazy, weights["2d"], device="cpu"))
    assert np.array_equal(result.labels, reference.labels)  # float64 is read as float32
    assert all(isinstance(key, slice) and key.stop - key.start <= 2 for key in lazy.reads)  # slab by slab
    one = run_to_end(segment_array(sample.scan[5], weights["2d"], device="cpu"))
    assert one.labels.shape == SHAPE[1:]


def test_segment_array_refuses_what_it_cannot_use_with_one_sentence(sample, weights, tmp_path):
    scan = sample.scan
    with pytest.raises(VolumeError, match="4 dimensions .*choose a 3D"):
        run_to_end(segment_array(scan[None], weights["2d"]))
    with pytest.raises(VolumeError, match="complex128, which a scan cannot be"):
        run_to_end(segment_array(scan.astype(complex), weights["2d"]))
    with pytest.raises(PredictConfigError, match="threshold 2"):
        run_to_end(segment_array(scan, weights["2d"], threshold=2))
    with pytest.raises(PredictConfigError, match="device 'gpu' is unknown"):
        run_to_end(segment_array(scan, weights["2d"], device="gpu"))
    with pytest.raises(TypeError, match="out"):
        run_to_end(segment_array(scan, weights["2d"], out="x"))
    text = tmp_path / "notes.pth"
    text.write_text("not a model")
    with pytest.raises(WeightsError, match=str(text)):
        run_to_end(segment_array(scan, text))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        run_to_end(segment_array(scan, weights["2d"], device="cpu", stop=stop))


def test_array_volume_reads_labels_of_any_integer_type_and_refuses_impossible_ones():
    labels = np.zeros((3, 8, 8), dtype=np.int64)
    labels[1, 2:4] = 300
    volume = ArrayVolume(labels, "painted", role="mask")
    assert volume.dtype == np.uint16 and np.array_equal(volume.read_slab(0, 3), labels)
    assert ArrayVolume(labels > 0, "mask", role="mask").dtype == np.uint8
    labels[2, 0, 0] = -1
    with pytest.raises(LabelError, match="painted holds label -1 .*relabel it"):
        volume.read_slice(2)
    with pytest.raises(VolumeError, match="float32, which a label mask cannot be"):
        ArrayVolume(labels.astype(np.float32), "probabilities", role="mask")
    assert ArrayVolume(labels, "scan").dtype == np.float32  # int64 grey values


# ----------------------------------------------------------------------------------------------
# The plugin: manifest and reader


@pytest.fixture
def plugin(request):
    """This package's manifest, registered in npe2's test plugin manager (napari's own plugins
    are not discovered there)."""
    pytest.importorskip("napari")
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    request.getfixturevalue("npe2pm").register(manifest)
    return manifest


def test_manifest_names_the_package_its_reader_and_both_widgets(plugin):
    assert plugin.name == "bone-apps"
    assert {w.display_name for w in plugin.contributions.widgets} == {"Segment bone", "Score labels (IoU)"}
    for command in plugin.contributions.commands:  # every python_name imports
        module, name = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name)), command.id


@pytest.fixture(scope="module")
def files(tmp_path_factory, sample) -> tuple[dict[str, Path], dict[str, Path]]:
    """The sample scan and its mask written by each format's own library."""
    pytest.importorskip("napari")
    from test_formats import write_with_libraries

    root = tmp_path_factory.mktemp("formats")
    scans = write_with_libraries(root / "scans", "femur", sample.scan, sample.voxel_size)
    masks = write_with_libraries(root / "masks", "femur", sample.mask, sample.voxel_size)
    scans["multipage"] = write_volume(root / "femur.tif", sample.scan, voxel_size=sample.voxel_size)
    return scans, masks


def test_reader_opens_every_format_lazily_with_the_voxel_size_as_scale(plugin, files, sample):
    import npe2

    from bone_apps.napari_plugin.lazy import VolumeArray

    scans, masks = files
    voxel = sample.voxel_size
    for kind, path in scans.items():
        [(data, meta, layer_type)] = npe2.read([str(path)], stack=False, plugin_name="bone-apps")
        assert layer_type == "image", kind
        assert isinstance(data, VolumeArray) and data.shape == SHAPE and data.dtype == np.uint16
        assert np.array_equal(data[7], sample.scan[7]), kind
        assert np.array_equal(np.asarray(data), sample.scan), kind
        assert meta["scale"] == pytest.approx((voxel.z, voxel.y, voxel.x)), kind
        assert meta["units"] == ("micrometer",) * 3 and meta["name"].startswith("femur"), kind
    for kind, path in masks.items():
        [(data, meta, layer_type)] = npe2.read([str(path)], stack=False, plugin_name="bone-apps")
        assert layer_type == "labels", kind
        assert np.array_equal(np.asarray(data), sample.mask), kind


def test_reader_claims_only_volumes_and_says_one_sentence_about_a_bad_one(plugin, files, tmp_path):
    import npe2

    from bone_apps.napari_plugin.reader import napari_get_reader

    scans, _ = files
    assert napari_get_reader(str(scans["tiff"])) is not None
    assert napari_get_reader(str(scans["z04"])) is not None
    assert napari_get_reader([str(scans["tiff"]), str(scans["tiff"])]) is None  # a stack of volumes
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no slices")
    assert napari_get_reader(str(tmp_path / "photo.png")) is None
    assert napari_get_reader(str(tmp_path / "notes")) is None
    broken = tmp_path / "broken.tif"
    broken.write_text("not a TIFF")
    with pytest.raises(VolumeError, match=f"{broken}.*") as error:
        npe2.read([str(broken)], stack=False, plugin_name="bone-apps")
    assert "\n" not in str(error.value)


def test_lazy_array_reads_only_the_slices_asked_for_and_indexes_like_numpy(files, sample, tmp_path):
    import shutil

    from bone_apps.napari_plugin.lazy import VolumeArray

    scans, _ = files
    folder = Path(shutil.copytree(scans["tiff"], tmp_path / "femur"))
    array = VolumeArray(open_volume(folder))
    expected = sample.scan
    keys = [7, -1, np.int64(3), (5, slice(10, 20), 3), slice(2, 5), (slice(None, None, 4), 0),
            slice(9, 2, -3), [1, 3], np.arange(16) % 5 == 0, (slice(4, 6), Ellipsis), (Ellipsis, 3),
            (None, 2)]
    for key in keys:
        assert np.array_equal(array[key], expected[key]), key
    with pytest.raises(IndexError):
        array[16]
    # With one slice's file gone, every other slice still shows: nothing else was read.
    sorted(folder.glob("*.tif"))[3].unlink()
    assert np.array_equal(array[9, 10:12], expected[9, 10:12])
    assert np.array_equal(array[4:8], expected[4:8])
    with pytest.raises(VolumeError, match="_0003"):
        array[3]


# ----------------------------------------------------------------------------------------------
# The widgets, on napari's viewer model


@pytest.fixture
def viewer(qapp):
    """A viewer model as napari hands it to plugin widgets: behind its public-only proxy."""
    napari = pytest.importorskip("napari")
    from napari.utils._proxies import PublicOnlyProxy

    return PublicOnlyProxy(napari.components.ViewerModel())


def _run(qtbot, widget) -> None:
    widget.start_button.native.click()
    qtbot.waitUntil(lambda: not widget.running(), timeout=60000)


def test_segment_bone_adds_the_labels_of_the_active_image(qtbot, viewer, sample, weights):
    import napari

    from bone_apps.napari_plugin.segment_widget import SegmentBoneWidget

    voxel = sample.voxel_size
    viewer.add_image(np.zeros((4, 8, 8), np.uint8), name="other")
    image = viewer.add_image(sample.scan, name="femur", scale=(voxel.z, voxel.y, voxel.x),
                             translate=(0, 10, 0), units="micrometer")
    widget = SegmentBoneWidget(viewer)
    assert widget.image.value == image  # the active layer
    assert widget.threshold.value == 0.5 and widget.device.value == "auto"
    widget.weights.value = weights["2d"]
    widget.device.value = "cpu"
    _run(qtbot, widget)
    expected = run_to_end(segment_array(sample.scan, weights["2d"], device="cpu"))
    layer = viewer.layers["femur labels"]
    assert isinstance(layer, napari.layers.Labels)
    assert np.array_equal(layer.data, expected.labels)
    assert tuple(layer.scale) == pytest.approx((voxel.z, voxel.y, voxel.x))
    assert tuple(layer.translate) == (0, 10, 0) and str(layer.units[0]) == "micrometer"
    assert layer.metadata["bone_apps"]["class_names"] == ["background", "bone", "pores"]
    assert widget.progress.value == widget.progress.max == SHAPE[0]
    assert widget.status.value.startswith("Done: background")
    # The status bar names a voxel's class.
    z, y, x = np.argwhere(expected.labels == 1)[0]
    assert "bone" in str(layer.get_status((z, y, x), world=False))


def test_segment_bone_says_what_is_wrong_in_one_sentence(qtbot, viewer, sample, weights, tmp_path):
    from bone_apps.napari_plugin.segment_widget import SegmentBoneWidget

    widget = SegmentBoneWidget(viewer)
    _run(qtbot, widget)
    assert widget.status.value == "There is no image layer to segment: open a scan first."
    viewer.add_image(sample.scan, name="femur")
    _run(qtbot, widget)
    assert widget.status.value.startswith("Choose the model to segment with")
    text = tmp_path / "notes.pth"
    text.write_text("not a model")
    widget.weights.value = text
    _run(qtbot, widget)
    assert str(text) in widget.status.value and "\n" not in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["femur"]  # nothing added
    # Stop ends the run between batches; no layer is added.
    widget.weights.value = weights["2d"]
    widget.device.value = "cpu"
    widget.chunk.value = 32
    widget.start_button.native.click()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60000)
    widget.stop_button.native.click()
    qtbot.waitUntil(lambda: not widget.running(), timeout=60000)
    assert widget.status.value == "Stopped." and len(viewer.layers) == 1


def test_score_labels_gives_iou_and_dice_per_class(qtbot, viewer):
    from bone_apps.napari_plugin.score_widget import ScoreLabelsWidget

    reference = np.zeros((4, 10, 10), dtype=np.uint8)
    reference[:, :5] = 255  # 200 voxels of "bone" as 0/255 masks hold it
    prediction = np.zeros((4, 10, 10), dtype=np.int32)  # napari's painted labels
    prediction[:, 2:6] = 255  # 160 voxels, 120 of them in the reference
    viewer.add_labels(reference, name="mask")
    viewer.add_labels(prediction, name="prediction")
    widget = ScoreLabelsWidget(viewer)
    assert widget.reference.value.name == "mask" and widget.prediction.value.name == "prediction"
    widget.class_names.value = "background, bone"
    _run(qtbot, widget)
    result = widget.result
    bone = result.classes[1]
    assert (bone.label, bone.name, bone.intersection) == (255, "bone", 120)
    assert bone.iou == pytest.approx(120 / 240) and bone.dice == pytest.approx(240 / 360)
    background = result.classes[0]  # 200 reference, 240 predicted, 160 in both
    assert background.iou == pytest.approx(160 / 280)
    assert widget.table.row_headers == ("background", "bone")
    assert widget.table.data.to_list()[1] == [255, "0.5000", "0.6667", 200, 160]
    means = (0.5 + 160 / 280) / 2, (2 / 3 + 320 / 440) / 2
    assert widget.means.value == f"mean IoU {means[0]:.4f}, mean Dice {means[1]:.4f}"
    # Leaving background out of the means.
    widget.ignore_background.value = True
    _run(qtbot, widget)
    assert widget.result.mean_iou == pytest.approx(0.5)
    # Different shapes: one sentence naming both layers.
    viewer.add_labels(np.zeros((4, 10, 12), np.uint8), name="wider")
    widget.prediction.value = viewer.layers["wider"]
    _run(qtbot, widget)
    assert "wider" in widget.status.value and "mask" in widget.status.value


def test_open_segment_and_score_an_ome_zarr_scan_in_napari(qtbot, viewer, plugin, files, sample, weights):
    """The user's path: scan and mask opened through the reader, segmented, scored."""
    import napari
    import npe2

    from bone_apps.core.score.scoring import compute_iou
    from bone_apps.napari_plugin.score_widget import ScoreLabelsWidget
    from bone_apps.napari_plugin.segment_widget import SegmentBoneWidget

    scans, masks = files
    for path in (masks["z05"], scans["z05"]):
        [(data, meta, layer_type)] = npe2.read([str(path)], stack=False, plugin_name="bone-apps")
        viewer.add_layer(napari.layers.Layer.create(data, meta, layer_type))
    mask, scan = viewer.layers
    assert isinstance(mask, napari.layers.Labels) and isinstance(scan, napari.layers.Image)
    segment = SegmentBoneWidget(viewer)
    assert segment.image.value == scan
    segment.weights.value = weights["2d"]
    segment.device.value = "cpu"
    _run(qtbot, segment)
    expected = run_to_end(segment_array(sample.scan, weights["2d"], device="cpu"))
    labels = viewer.layers[f"{scan.name} labels"]
    assert np.array_equal(labels.data, expected.labels)  # read lazily from the store, same labels
    assert tuple(labels.scale) == pytest.approx(tuple(scan.scale))
    score = ScoreLabelsWidget(viewer)
    assert score.prediction.value == labels and score.reference.value == mask
    _run(qtbot, score)
    reference = compute_iou(ArrayVolume(sample.mask, "mask", role="mask"),
                            ArrayVolume(expected.labels, "labels", role="mask"),
                            class_names=["background", "bone", "pores"])
    assert [c.name for c in score.result.classes] == ["background", "bone", "pores"]  # the model's names
    assert score.result.mean_iou == pytest.approx(reference.mean_iou)
    assert score.result.confusion == reference.confusion


def test_closing_the_widget_mid_run_stops_the_job_and_adds_nothing(qtbot, viewer, sample, weights):
    from bone_apps.napari_plugin.segment_widget import SegmentBoneWidget

    viewer.add_image(sample.scan, name="femur")
    widget = SegmentBoneWidget(viewer)
    widget.weights.value = weights["2d"]
    widget.device.value = "cpu"
    widget.chunk.value = 32
    widget.start_button.native.click()
    worker = widget.worker
    ended = []
    worker.errored.connect(ended.append)
    worker.returned.connect(ended.append)
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60000)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        widget.native.close()
        widget.native.deleteLater()
    assert len(ended) == 1 and isinstance(ended[0], Cancelled)
    assert [layer.name for layer in viewer.layers] == ["femur"]


# ----------------------------------------------------------------------------------------------
# A real napari viewer


def test_napari_docks_both_widgets_from_the_manifest(request, plugin):
    from bone_apps.napari_plugin.score_widget import ScoreLabelsWidget
    from bone_apps.napari_plugin.segment_widget import SegmentBoneWidget

    viewer = request.getfixturevalue("make_napari_viewer")()
    _, segment = viewer.window.add_plugin_dock_widget("bone-apps", "Segment bone")
    _, score = viewer.window.add_plugin_dock_widget("bone-apps", "Score labels (IoU)")
    assert isinstance(segment, SegmentBoneWidget) and isinstance(score, ScoreLabelsWidget)
    # napari hands plugins its viewer behind a proxy that hides private attributes.
    for widget in (segment, score):
        assert getattr(widget.viewer, "__wrapped__", widget.viewer) is viewer
    assert segment.image.choices == () and score.reference.choices == ()
