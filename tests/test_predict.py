"""Prediction engine: exact merging through the whole pipeline, 2D/2.5D/3D models end to end,
threshold, batch independence, reproducibility, outputs, bad inputs, stopping, bounded memory."""

from __future__ import annotations

import shutil
import threading
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from bone_apps.core.data.normalize import StatsProgress, compute_stats, normalize
from bone_apps.core.errors import (
    Cancelled,
    ForeignFilesError,
    OutputExistsError,
    PredictConfigError,
    VolumeError,
    WeightsError,
)
from bone_apps.core.io.volume import VoxelSize, open_volume
from bone_apps.core.io.writer import write_volume
from bone_apps.core.model.spec import ModelSpec
from bone_apps.core.predict.batching import ChunkRunner, choose_batch
from bone_apps.core.predict.config import PredictConfig
from bone_apps.core.predict.inferer import SliceSource, infer_slices, plan_chunks
from bone_apps.core.predict.output_plan import scans_in
from bone_apps.core.predict.reports import ScanFinished, ScanStarted, SliceProgress
from bone_apps.core.predict.segment import predict, run_predict, segment_volume
from bone_apps.core.predict.windows import BlendMode, window_weights

CLASS_NAMES = ["background", "bone", "pores"]
MODELS = {  # dims -> (architecture, encoder, in_channels, context, patch_depth)
    "2d": ("Unet", "resnet18", 1, 0, 1),
    "2.5d": ("Unet", "resnet18", 3, 1, 1),
    "3d": ("BasicUNet", "tiny", 1, 0, 16),
}


def make_weights(path: Path, dims: str = "2d", seed: int = 0, norm: str = "zscore") -> Path:
    """A randomly initialised tiny model saved as a complete weights file."""
    from bone_apps.core.model.models import build_model, required_multiple
    from bone_apps.core.model.weights import save_weights

    arch, encoder, channels, context, depth = MODELS[dims]
    torch.manual_seed(seed)
    model = build_model(dims, arch, encoder, channels, 3, patch_depth=depth)
    meta = {"dims": dims, "arch": arch, "encoder": encoder, "in_channels": channels, "classes": 3,
            "class_names": CLASS_NAMES, "patch_size": 64, "context": context, "patch_depth": depth,
            "norm": norm, "required_multiple": required_multiple(model, dims),
            "fit_config": {"epochs": 0}, "metrics": {}}
    return save_weights(path, model, meta)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {dims: make_weights(folder / f"{dims}.pth", dims) for dims in MODELS}


def scan_of(root: Path, k: int = 0) -> Path:
    return root / "scans" / f"bone_{k:02d}"


def config(scan, weights_file, out, **options) -> PredictConfig:
    scans = scan if isinstance(scan, tuple) else (scan,)
    # One process for the statistics: spawning workers costs seconds that tiny scans do not need.
    options = {"device": "cpu", "stats_workers": 1, **options}
    return PredictConfig(scans=scans, weights=weights_file, out=out, **options)


def read(path: Path) -> np.ndarray:
    volume = open_volume(path, role="mask")
    return volume.read_slab(0, volume.shape[0])


# ----------------------------------------------------------------------------------------------
# The whole pipeline with an identity-like predictor gives its input back exactly


class LabelEcho(torch.nn.Module):
    """Logits that pick, at every voxel, the class equal to the (min-max normalized) input
    label value: an identity on label scans, and equivariant to flips."""

    def __init__(self, dims: str, context: int = 0, classes: int = 3) -> None:
        super().__init__()
        self.dims, self.context, self.classes = dims, context, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = x[:, self.context] if self.dims == "2.5d" else x[:, 0]  # (B, [D,] H, W)
        label = value * (self.classes - 1)
        levels = torch.arange(self.classes, dtype=x.dtype).view(1, -1, *([1] * (value.dim() - 1)))
        return -50.0 * (label.unsqueeze(1) - levels) ** 2


def _echo_spec(dims: str, multiple: int = 16) -> ModelSpec:
    context = 1 if dims == "2.5d" else 0
    return ModelSpec(dims=dims, in_channels=2 * context + 1, classes=3, class_names=tuple(CLASS_NAMES),
                     context=context, patch_depth=16 if dims == "3d" else 1, norm="minmax-full",
                     required_multiple=multiple)


def _run_segment(volume, spec, chunk, overlap, batch, blend=BlendMode.MEAN, chunk_depth=None,
                 tta=False, threshold=0.5):
    plan = plan_chunks(volume.shape, spec, chunk, chunk_depth, overlap)
    runner = ChunkRunner(LabelEcho(spec.dims, spec.context), ["cpu"], batch, tta)
    slices: list[np.ndarray] = []
    job = segment_volume(volume, compute_stats(volume), spec, runner, plan, [slices.append],
                         threshold, blend)
    while True:
        try:
            next(job)
        except StopIteration as done:
            return np.stack(slices), done.value, plan


@pytest.fixture(scope="module")
def label_scan(tmp_path_factory) -> Path:
    """A 20x50x70 'scan' whose voxels are labels 0..2 (with 0 and 2 both present)."""
    labels = np.random.default_rng(3).integers(0, 3, (20, 50, 70)).astype(np.uint8)
    labels[0, 0, 0], labels[0, 0, 1] = 0, 2
    folder = tmp_path_factory.mktemp("labels") / "scan"
    write_volume(folder, labels)
    return folder


@pytest.mark.parametrize("dims", ["2d", "2.5d", "3d"])
@pytest.mark.parametrize("chunk,overlap,batch", [(16, 0.0, 1), (32, 0.25, 3), (32, 0.5, 8),
                                                 (48, 0.75, 5), (512, 0.25, 4)])
def test_identity_predictor_through_chunking_and_merging_gives_the_scan_back(
        label_scan, dims, chunk, overlap, batch):
    volume = open_volume(label_scan)
    expected = volume.read_slab(0, volume.shape[0])
    labels, tally, plan = _run_segment(volume, _echo_spec(dims), chunk, overlap, batch, chunk_depth=16)
    assert np.array_equal(labels, expected)
    assert tally["counts"] == [int((expected == c).sum()) for c in range(3)]
    if chunk == 512:  # larger than the slice: shrinks to it (50x70, padded to 64x80, cropped)
        assert plan.window[1:] == (50, 70) and plan.input_shape[-2:] == (64, 80)


def test_identity_predictor_with_gaussian_blend_and_flips(label_scan):
    volume = open_volume(label_scan)
    expected = volume.read_slab(0, volume.shape[0])
    for dims in ("2d", "3d"):
        labels, _, _ = _run_segment(volume, _echo_spec(dims), 32, 0.5, 4, BlendMode.GAUSSIAN,
                                    chunk_depth=16, tta=True)
        assert np.array_equal(labels, expected)


@pytest.mark.parametrize("dims", ["2d", "2.5d", "3d"])
@pytest.mark.parametrize("chunk,overlap,batch,blend", [
    (16, 0.0, 1, BlendMode.MEAN), (32, 0.5, 3, BlendMode.GAUSSIAN), (48, 0.75, 7, BlendMode.MEAN)])
def test_the_inferer_merges_any_predictor_back_into_its_input(label_scan, dims, chunk, overlap, batch, blend):
    """x + 1 through chunking, batching and blending, merged on a stitching device of its own."""
    volume = open_volume(label_scan)
    stats = compute_stats(volume)
    spec = _echo_spec(dims)
    plan = plan_chunks(volume.shape, spec, chunk, 16, overlap)
    source = SliceSource(volume, stats, spec.norm, plan, torch.device("cpu"))
    centre = spec.context if dims == "2.5d" else 0
    weights = None if blend is BlendMode.MEAN else torch.from_numpy(window_weights(plan.window, blend))
    slices = infer_slices(lambda x: x[:, centre:centre + 1] + 1, source, plan, batch, 1, weights, "cpu")
    seen = []
    for z, probs in slices:  # each slice is only valid until the next is asked for
        expected = normalize(volume.read_slice(z), stats, spec.norm) + 1
        assert probs.shape == (1, *volume.shape[1:])
        assert np.allclose(probs[0].numpy(), expected, atol=1e-5), z
        seen.append(z)
    assert seen == list(range(volume.shape[0]))


def test_memory_is_bounded_by_the_chunk_and_batch_not_by_the_slice_count(tmp_path):
    peaks = {}
    for depth in (48, 96):
        folder = tmp_path / f"scan{depth}"
        write_volume(folder, np.random.default_rng(0).integers(0, 3, (depth, 40, 40)).astype(np.uint8))
        volume = open_volume(folder)
        for dims in ("2d", "2.5d", "3d"):
            _, tally, _ = _run_segment(volume, _echo_spec(dims), 32, 0.25, 6, chunk_depth=16)
            peaks[dims, depth] = (tally["peak_open_slices"], tally["peak_cached_slices"])
    for dims in ("2d", "2.5d", "3d"):
        assert peaks[dims, 48] == peaks[dims, 96], dims
    # 2D: 6 chunks of 4 per slice span at most 3 slices; 3D: one slab of 16 slices (+ next).
    assert peaks["2d", 96][0] <= 3
    assert peaks["3d", 96][0] <= 16 + 12


# ----------------------------------------------------------------------------------------------
# Real models end to end


@pytest.mark.parametrize("dims", ["2d", "2.5d", "3d"])
def test_real_models_end_to_end_write_labels_with_names_voxel_size_and_report(
        sample_root, weights, tmp_path, dims):
    scan = scan_of(sample_root)
    out = tmp_path / "labels"
    events = []
    report = run_predict(config(scan, weights[dims], out, probabilities=True,
                                report=tmp_path / "report.json"), on_event=events.append)
    source = open_volume(scan)
    result = open_volume(out, role="mask")
    assert result.shape == source.shape and result.dtype == np.uint8
    assert result.slice_names == source.slice_names
    assert astuple(result.voxel_size) == pytest.approx(astuple(source.voxel_size))
    labels = result.read_slab(0, result.shape[0])
    assert labels.max() <= 2
    s = report.scans[0]
    assert sum(s.counts) == labels.size
    assert list(s.counts) == [int((labels == c).sum()) for c in range(3)]
    assert sum(s.histogram) == labels.size and s.histogram[:3] == (0, 0, 0)  # winners are >= 1/3
    assert 1 / 3 <= s.mean_confidence <= 1
    assert sum(report.fractions) == pytest.approx(1.0)
    # Probability stacks: one per class, uint8, summing to about 255 at each voxel.
    probs = np.stack([read(Path(p)) for p in s.probabilities]).astype(int)
    assert probs.shape == (3, *labels.shape)
    assert np.abs(probs.sum(0) - 255).max() <= 2
    confident = probs.max(0) >= 140  # well above the 0.5 threshold: label is the argmax
    assert np.array_equal(labels[confident], probs.argmax(0)[confident])
    # Progress records: statistics, start, every slice, finish.
    kinds = [type(e) for e in events]
    assert kinds[0] is StatsProgress and ScanStarted in kinds and kinds[-1] is ScanFinished
    assert [e.done for e in events if isinstance(e, SliceProgress)][-1] == source.shape[0]
    data = (tmp_path / "report.json").read_text()
    for key in ("mean_confidence", "reassigned_fraction", "histogram", "peak_rss_bytes", "wall_s",
                "model_s", '"batch"', '"device"', "summary"):
        assert key in data


def test_threshold_reassigns_low_confidence_voxels_to_background(sample_root, weights, tmp_path):
    scan = scan_of(sample_root, 1)
    runs = {}
    for threshold in (0.0, 0.5, 1.0):
        out = tmp_path / f"t{threshold}"
        report = run_predict(config(scan, weights["2d"], out, threshold=threshold))
        runs[threshold] = (read(out), report.scans[0])
    keep_all, low = runs[0.0], runs[0.5]
    assert keep_all[1].reassigned == 0
    changed = keep_all[0] != low[0]
    assert (low[0][changed] == 0).all()  # only ever to background
    assert changed.sum() == low[1].reassigned > 0
    # Every non-background winner is below 1.0 with a random model: all background.
    assert (runs[1.0][0] == 0).all()


def test_labels_do_not_depend_on_the_batch_and_reruns_are_bitwise_identical(
        sample_root, weights, tmp_path):
    scan = scan_of(sample_root, 2)
    outs = {}
    for name, batch in (("one", 1), ("auto", None), ("auto_again", None)):
        outs[name] = tmp_path / name
        report = run_predict(config(scan, weights["2.5d"], outs[name], batch=batch))
        if name == "auto":
            assert report.scans[0].batch > 1
    labels = {name: read(path) for name, path in outs.items()}
    assert np.array_equal(labels["one"], labels["auto"])
    for a, b in zip(sorted(outs["auto"].iterdir()), sorted(outs["auto_again"].iterdir())):
        assert a.read_bytes() == b.read_bytes()


def test_multipage_in_gives_multipage_out_and_several_scans_go_to_out_id(sample_root, weights, tmp_path):
    source = open_volume(scan_of(sample_root))
    stack = tmp_path / "stack.tif"
    write_volume(stack, source.read_slab(0, 16), voxel_size=VoxelSize(2.0, 3.0, 3.0))
    run_predict(config(stack, weights["2d"], tmp_path / "labels.tif"))
    out = open_volume(tmp_path / "labels.tif", role="mask")
    assert out.shape == (16, 64, 64) and not out.is_folder
    assert astuple(out.voxel_size) == pytest.approx((2.0, 3.0, 3.0))
    with pytest.raises(PredictConfigError, match="ending in .tif"):
        run_predict(config(stack, weights["2d"], tmp_path / "labels_folder"))
    with pytest.raises(PredictConfigError, match="folder name"):
        run_predict(config(scan_of(sample_root), weights["2d"], tmp_path / "x.tif"))
    many = tmp_path / "many"
    report = run_predict(config((scan_of(sample_root, 3), stack), weights["2d"], many))
    assert sorted(p.name for p in many.iterdir()) == ["bone_03", "stack.tif"]
    assert [Path(s.output).name for s in report.scans] == ["bone_03", "stack.tif"]
    assert scans_in(sample_root) == [scan_of(sample_root, k) for k in range(4)]


def test_existing_outputs_are_refused_unless_overwrite(sample_root, weights, tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        run_predict(config(scan_of(sample_root), weights["2d"], out))
    assert (out / "keep.txt").exists()
    with pytest.raises(OutputExistsError, match="_prob_bone"):
        (tmp_path / "p_prob_bone").mkdir()
        run_predict(config(scan_of(sample_root), weights["2d"], tmp_path / "p", probabilities=True))
    assert not (tmp_path / "p").exists()
    with pytest.raises(ForeignFilesError, match="keep.txt"):
        run_predict(config(scan_of(sample_root), weights["2d"], out, overwrite=True))
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder may be replaced
    run_predict(config(scan_of(sample_root), weights["2d"], out, overwrite=True))
    assert len(list(out.glob("*.tif"))) == 16


def _weights_variants(folder: Path, good: Path) -> dict[str, Path]:
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    files = {}
    files["missing"] = folder / "missing.pth"
    files["text"] = folder / "notes.pth"
    files["text"].write_text("not a model")
    files["plain state_dict"] = folder / "plain.pth"
    torch.save({"w": torch.zeros(2)}, files["plain state_dict"])
    files["crafted pickle"] = folder / "evil.pth"
    torch.save({"format": "bone_apps.weights/1", "state_dict": {}, "meta": Evil()}, files["crafted pickle"])
    payload = torch.load(good, weights_only=True)
    files["future format"] = folder / "future.pth"
    torch.save({**payload, "format": "bone_apps.weights/9"}, files["future format"])
    files["incomplete meta"] = folder / "incomplete.pth"
    spec = dict(payload["meta"]["spec"])
    del spec["norm"]
    torch.save({**payload, "meta": {**payload["meta"], "spec": spec}}, files["incomplete meta"])
    files["wrong parameters"] = folder / "wrong.pth"
    torch.save(_with_spec(payload, encoder="resnet34"), files["wrong parameters"])
    files["inconsistent meta"] = folder / "inconsistent.pth"
    torch.save(_with_spec(payload, in_channels=2), files["inconsistent meta"])
    return files


def _with_spec(payload: dict, **changes) -> dict:
    """A weights payload whose model description (meta["spec"]) says something else."""
    return {**payload, "meta": {**payload["meta"], "spec": {**payload["meta"]["spec"], **changes}}}


def test_bad_weights_files_get_one_clear_sentence(sample_root, weights, tmp_path, capsys):
    for kind, path in _weights_variants(tmp_path, weights["2d"]).items():
        with pytest.raises(WeightsError) as info:
            run_predict(config(scan_of(sample_root), path, tmp_path / f"out_{path.stem}"))
        message = str(info.value)
        assert str(path) in message and "\n" not in message, kind
        assert not (tmp_path / f"out_{path.stem}").exists()
    assert "this must never run" not in capsys.readouterr().out


def test_bad_scans_and_options_are_refused(sample_root, weights, tmp_path):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    for scan, pattern in ((tmp_path / "nowhere", "does not exist"), (rgb, "colour")):
        with pytest.raises(VolumeError, match=pattern):
            run_predict(config(scan, weights["2d"], tmp_path / "o.tif"))
    with pytest.raises(VolumeError, match="scans"):
        scans_in(tmp_path)
    for option, value in (("overlap", 1.0), ("overlap", -0.2), ("threshold", 1.5), ("chunk", 0),
                          ("batch", 0), ("device", "gpu"), ("blend", "max")):
        with pytest.raises(PredictConfigError):
            config(scan_of(sample_root), weights["2d"], tmp_path / "o", **{option: value})
    with pytest.raises(PredictConfigError, match="both be written"):
        run_predict(config((scan_of(sample_root), scan_of(sample_root)), weights["2d"], tmp_path / "d"))


def test_stopping_leaves_no_output_under_the_final_name(sample_root, weights, tmp_path):
    out = tmp_path / "labels"
    stop = threading.Event()
    job = predict(config(scan_of(sample_root), weights["2d"], out, batch=2), stop)
    with pytest.raises(Cancelled):
        for event in job:
            if isinstance(event, SliceProgress) and event.done == 3:
                stop.set()
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # Closing the generator half-way (what Ctrl-C does through the CLI) cleans up the same way.
    job = predict(config(scan_of(sample_root), weights["2d"], out, batch=2))
    for event in job:
        if isinstance(event, SliceProgress) and event.done == 5:
            break
    job.close()
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_out_of_memory_halves_the_batch_and_gives_the_same_labels(label_scan):
    class Picky(LabelEcho):
        calls: list[int] = []

        def forward(self, x):
            self.calls.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    volume = open_volume(label_scan)
    spec = _echo_spec("2d")
    plan = plan_chunks(volume.shape, spec, 32, None, 0.25)
    model = Picky("2d")
    runner = ChunkRunner(model, ["cpu"], 8)
    slices: list[np.ndarray] = []
    for _ in segment_volume(volume, compute_stats(volume), spec, runner, plan, [slices.append]):
        pass
    assert runner.batch == 2 and runner.halvings == 2
    assert max(model.calls[2:]) == 2
    assert np.array_equal(np.stack(slices), volume.read_slab(0, 20))


def test_automatic_cpu_batch_gathers_small_chunks_but_not_large_ones(weights):
    from bone_apps.core.predict.segment import load_model

    model, _, spec = load_model(weights["2d"])
    assert choose_batch(model, ["cpu"], (1, 64, 64), 3, chunks=1000, multiple=32) == 64
    assert choose_batch(model, ["cpu"], (1, 64, 64), 3, chunks=10, multiple=32) == 8
    assert choose_batch(model, ["cpu"], (1, 512, 512), 3, chunks=1000, multiple=32) == 1
    assert spec.classes == 3 and spec.norm == "zscore"


def test_dataset_folder_of_several_scans(sample_root, weights, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_root / "scans", root / "scans")
    report = run_predict(config(tuple(scans_in(root)), weights["3d"], tmp_path / "out", chunk_depth=8,
                                stats_cache=tmp_path / "cache"))
    assert len(report.scans) == 4 and report.scans[0].window == (16, 64, 64)  # depth 8 -> multiple 16
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"bone_{k:02d}" for k in range(4)]
    assert report.voxels == 4 * 16 * 64 * 64
    assert len(list((tmp_path / "cache").iterdir())) == 4  # statistics cached for the next run


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_prediction_matches_its_own_rerun_and_sizes_the_batch(sample_root, weights, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    reports = [run_predict(PredictConfig(scans=(scan_of(sample_root),), weights=weights["2d"], out=o,
                                         device="cuda")) for o in outs]
    assert reports[0].batch >= 1 and reports[0].peak_vram_bytes
    assert np.array_equal(read(outs[0]), read(outs[1]))
    if torch.cuda.device_count() > 1:
        run_predict(PredictConfig(scans=(scan_of(sample_root),), weights=weights["2d"],
                                  out=tmp_path / "dp", device="cuda:0,1"))
        assert np.array_equal(read(tmp_path / "dp"), read(outs[0]))
