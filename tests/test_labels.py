"""Masks as other tools save them (0/255, 0/128/255, 1/2/3), scans given as masks, class names.

The end-to-end test writes real files: sample scans with their masks re-valued to 0/128/255,
fits a tiny model through `bone fit`, predicts with `bone predict` and scores with `bone iou`.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bone_apps.cli import main
from bone_apps.core.data.pairs import _value_counts, check_pairs, label_counts_task, pairs_from_paths
from bone_apps.core.errors import DataCheckError, FitConfigError, LabelError, WeightsError
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.io.labels import (
    MAX_LABEL_VALUES,
    LabelMap,
    check_class_names,
    label_map_for,
    too_many_values,
)
from bone_apps.core.io.volume import open_volume
from bone_apps.core.io.writer import write_volume
from bone_apps.core.model.weights import load_weights
from bone_apps.core.score.scoring import compute_iou

VALUES = (0, 128, 255)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch):
    """Keep the statistics cache out of the user's home."""
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))


def _revalued_masks(sample_root: Path, folder: Path, values=VALUES, n: int = 3) -> list[tuple[str, str]]:
    """(scan, mask) pairs whose masks hold `values` instead of 0, 1, 2 (uint8 TIFF stacks)."""
    pairs = []
    lut = np.asarray(values, dtype=np.uint16 if max(values) > 255 else np.uint8)
    for scan in sorted((sample_root / "scans").iterdir())[:n]:
        with open_volume(sample_root / "masks" / scan.name, role="mask") as mask:
            data = np.stack([mask.read_slice(z) for z in range(mask.shape[0])])
        target = folder / "masks" / scan.name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_volume(target, lut[data])
        pairs.append((str(scan), str(target)))
    return pairs


def _read(path: Path) -> np.ndarray:
    with open_volume(path, role="mask") as volume:
        return np.stack([volume.read_slice(z) for z in range(volume.shape[0])])


# ----------------------------------------------------------------------------------------------
# LabelMap and the decision


def test_label_map_round_trip_and_lookup():
    label_map = LabelMap(VALUES)
    assert label_map.classes == 3 and not label_map.is_identity
    mask = np.array([[0, 128], [255, 0]], np.uint8)
    index = label_map.to_index(mask)
    assert index.tolist() == [[0, 1], [2, 0]] and index.dtype == np.uint8
    assert label_map.to_values(index).tolist() == mask.tolist()
    assert label_map.to_values(index).dtype == np.uint8
    assert LabelMap((0, 1000)).to_values(np.array([1])).dtype == np.uint16
    assert LabelMap.from_dict(label_map.to_dict(), 3) == label_map
    assert LabelMap.from_dict({}, 3) is None
    for bad in ({"label_values": [0, 0, 1]}, {"label_values": [0, "a"]}, {"label_values": [0, 1]}):
        with pytest.raises(ValueError):
            LabelMap.from_dict(bad, 3)


def test_which_values_are_mapped():
    assert label_map_for([0, 1, 2]).is_identity
    assert label_map_for([0, 255]).values == (0, 255)
    assert label_map_for([0, 128, 255]).values == VALUES
    # Without 0, the smallest value is class 0 (and is written back as itself).
    assert label_map_for([1, 2, 3]).values == (1, 2, 3)
    # Names that cover the labels declare classes 0..N-1, present or not.
    assert label_map_for([0, 2], ["a", "b", "c"]) == LabelMap.identity(3)
    # Names for mapped values name them in order, one per value.
    assert label_map_for([0, 255], ["background", "bone"]).values == (0, 255)
    with pytest.raises(LabelError, match="give one name per value"):
        label_map_for([0, 128, 255], ["background", "bone"])
    with pytest.raises(LabelError, match="looks like a scan"):
        label_map_for(range(MAX_LABEL_VALUES + 1))
    message = too_many_values("m.tif", list(range(41213)))
    assert message == ("m.tif holds 41213 distinct values (0, 1, 2, ... 41212): this looks like a "
                       "scan, not a label mask (at most 64 labels); choose the mask")


def test_old_cache_entries_still_read():
    assert _value_counts({"counts": [5, 0, 2]}) == ({0: 5, 2: 2}, True)
    assert _value_counts({"values": [0, 255], "counts": [3, 4], "complete": True}) == (
        {0: 3, 255: 4}, True)


# ----------------------------------------------------------------------------------------------
# Class names


@pytest.mark.parametrize("names, clash", [
    (("background", "bone", "bone"), "'bone' twice"),
    (("background", "bone 1", "bone/1"), "'bone_1'"),
    (("background", "Bone", "bone"), "'bone'"),
    (("background", "", "bone"), "empty name"),
])
def test_clashing_class_names_are_refused(names, clash):
    with pytest.raises(FitConfigError, match=clash) as info:
        FitConfig(out="o", pairs=(("a", "b"),), class_names=names)
    assert "\n" not in str(info.value)
    assert check_class_names(("background", "bone", "pores")) == ("background", "bone", "pores")


def test_cli_fit_refuses_repeated_names_before_any_work(sample_root, tmp_path, capsys):
    scan = sample_root / "scans" / "bone_00"
    code = main(["fit", "--pair", str(scan), str(sample_root / "masks" / "bone_00"),
                 "--pair", str(scan), str(sample_root / "masks" / "bone_00"),
                 "--class-names", "background,bone,bone", "--out", str(tmp_path / "o"),
                 "--init", "random"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'bone' twice" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_weights_with_clashing_names_are_refused(tmp_path):
    from bone_apps.core.model.models import build_model
    from bone_apps.core.model.weights import save_weights
    from bone_apps.core.predict.segment import load_model

    model = build_model("2d", "Unet", "resnet18", 1, 2)
    meta = {"dims": "2d", "arch": "Unet", "encoder": "resnet18", "in_channels": 1, "classes": 2,
            "class_names": ["Bone", "bone"], "patch_size": 32, "context": 0, "patch_depth": 1,
            "norm": "zscore", "required_multiple": 32}
    path = save_weights(tmp_path / "w.pth", model, meta)
    with pytest.raises(WeightsError, match="would both be saved"):
        load_model(path)


# ----------------------------------------------------------------------------------------------
# Scans given as masks


def test_a_16bit_scan_as_mask_is_refused_before_anything_is_allocated(sample_root, tmp_path,
                                                                      monkeypatch, capsys):
    import bone_apps.core.fit.network as fit_module

    def never(*_args, **_kwargs):
        raise AssertionError("a model was built from a scan's values")

    monkeypatch.setattr(fit_module, "build_model", never)
    scans = sorted((sample_root / "scans").iterdir())
    good = sample_root / "masks" / scans[1].name
    started = time.perf_counter()
    tracemalloc.start()
    try:
        code = main(["fit", "--pair", str(scans[0]), str(scans[0]),  # the scan as its own mask
                     "--pair", str(scans[1]), str(good), "--out", str(tmp_path / "o"),
                     "--init", "random", "--workers", "0", "--stats-workers", "1",
                     "--cache-dir", str(tmp_path / "c"), "--epochs", "1"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2
    err = capsys.readouterr().err
    assert f"{scans[0]} holds " in err and "distinct values (" in err
    assert "this looks like a scan, not a label mask" in err and "choose the mask" in err
    assert "Traceback" not in err
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated"
    assert time.perf_counter() - started < 60
    # Class names do not change that: the scan is named, not 65533 labels listed.
    pairs = pairs_from_paths([(scans[0], scans[0]), (scans[1], good)])
    with pytest.raises(DataCheckError, match="looks like a scan") as info:
        check_pairs(pairs, ("background", "bone", "pores"), workers=1)
    assert len(str(info.value)) < 400


def test_counting_stops_early_on_a_scan(sample_root):
    scan = sorted((sample_root / "scans").iterdir())[0]
    result = label_counts_task(str(scan))
    assert not result["complete"] and len(result["values"]) > MAX_LABEL_VALUES


def test_iou_refuses_a_scan_and_scores_0_255_masks_as_two_classes(sample_root, tmp_path, capsys):
    pairs = _revalued_masks(sample_root, tmp_path, values=(0, 255, 255), n=1)
    mask = Path(pairs[0][1])
    reference = _read(mask)
    prediction = reference.copy()
    prediction[:, :4] = 0
    write_volume(tmp_path / "pred", prediction)
    result = compute_iou(mask, tmp_path / "pred", device="cpu")
    assert [c.label for c in result.classes] == [0, 255]
    assert [c.name for c in result.classes] == ["class 0", "class 255"]
    assert result.classes[1].reference_voxels == int((reference == 255).sum())
    named = compute_iou(mask, tmp_path / "pred", class_names=["background", "bone"], device="cpu",
                        ignore_background=True)
    assert [c.name for c in named.classes] == ["background", "bone"]
    assert named.mean_iou == pytest.approx(result.classes[1].iou)
    # Through the CLI: two rows, not 256.
    assert main(["iou", str(mask), str(tmp_path / "pred"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "255" in printed and "class 254" not in printed and "class 1 " not in printed
    # A 16-bit scan as the prediction: refused by name, no 65536 x 65536 matrix.
    scan = Path(pairs[0][0])
    tracemalloc.start()
    try:
        with pytest.raises(LabelError, match="looks like a scan, not a label mask") as info:
            compute_iou(mask, scan, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"prediction {scan}" in str(info.value) and peak < 64 << 20
    assert main(["iou", str(scan), str(mask), "--device", "cpu"]) == 2
    assert "looks like a scan" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Fit, predict and score with 0/128/255 masks, through the CLI


def test_0_128_255_masks_fit_predict_and_score_in_the_users_values(sample_root, tmp_path, capsys):
    pairs = _revalued_masks(sample_root, tmp_path)
    out = tmp_path / "run"
    args = ["fit", "--out", str(out), "--patch", "32", "--batch", "4", "--epochs", "1",
            "--init", "random", "--workers", "0", "--cache-dir", str(tmp_path / "cache"),
            "--class-names", "background,bone,pores"]
    for scan, mask in pairs:
        args += ["--pair", scan, mask]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "note: the masks hold the values 0, 128, 255 rather than 0..2" in printed
    assert "128 -> bone" in printed
    meta = load_weights(out / "model.pth")[1]
    assert meta["label_values"] == [0, 128, 255] and meta["classes"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_values"] == [0, 128, 255]

    scan, mask = pairs[0]
    predicted = tmp_path / "pred"
    assert main(["predict", scan, "--weights", str(out / "model.pth"), "--out", str(predicted),
                 "--device", "cpu", "--chunk", "32", "--batch", "4", "--threshold", "0"]) == 0
    labels = _read(predicted)
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= set(VALUES)
    capsys.readouterr()
    assert main(["iou", mask, str(predicted), "--device", "cpu",
                 "--class-names", "background,bone,pores", "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert [c["label"] for c in scores["classes"]] == [0, 128, 255]
    assert [c["name"] for c in scores["classes"]] == ["background", "bone", "pores"]


def test_masks_without_0_keep_their_values(sample_root, tmp_path):
    """{1, 2, 3}: value 1 is class 0 (low-confidence voxels are written as 1, never 0)."""
    pairs = _revalued_masks(sample_root, tmp_path, values=(1, 2, 3), n=2)
    summary = check_pairs(pairs_from_paths(pairs), workers=1)
    assert summary.classes == 3 and summary.label_values == (1, 2, 3)
    assert any("1 -> background" in note for note in summary.notes)
    assert all(len(info.label_counts) == 3 and info.label_counts[0] > 0 for info in summary.infos)
    # Unchanged for masks that already hold 0..N-1: no note, identity.
    plain = check_pairs(pairs_from_paths([(pairs[0][0], str(sample_root / "masks" / "bone_00"))]),
                        workers=1)
    assert plain.label_map.is_identity and not plain.notes


def test_patches_carry_classes_not_values(sample_root, tmp_path):
    from bone_apps.core.data.sampling import Dims, PatchBatches, PatchLayout, ScanSource

    pairs = _revalued_masks(sample_root, tmp_path, n=1)
    summary = check_pairs(pairs_from_paths(pairs), workers=1)
    info = summary.infos[0]
    source = ScanSource(info.pair.id, info.pair.scan, info.pair.mask, info.shape, info.stats)
    layout = PatchLayout(Dims.D2, 32, 2, 0.5)
    mapped = PatchBatches([source], layout, "zscore", 4, 0, train=False,
                          label_values=summary.label_values)
    _, mask = mapped[0, 0]
    assert set(np.unique(mask).tolist()) <= {0, 1, 2} and mask.max() == 2


def test_iou_by_value_equals_the_in_memory_result(tmp_path):
    """Slices of small labels and slices of 0/100/200 in one stack: the counts add up exactly."""
    from bone_apps.core.score.metrics import confusion_matrix, scores_from_confusion

    rng = np.random.default_rng(3)
    reference = rng.choice(np.array([0, 100, 200], np.uint8), (6, 40, 30))
    reference[:2] = rng.integers(0, 2, (2, 40, 30))  # the first slices hold only 0 and 1
    prediction = np.where(rng.random(reference.shape) < 0.2, 200, reference).astype(np.uint8)
    write_volume(tmp_path / "ref", reference)
    write_volume(tmp_path / "pred", prediction)
    result = compute_iou(tmp_path / "ref", tmp_path / "pred", device="cpu")
    values = [0, 1, 100, 200]
    lut = np.zeros(256, np.uint8)
    lut[values] = np.arange(4)
    expected = scores_from_confusion(confusion_matrix(lut[reference], lut[prediction], 4))
    assert [c.label for c in result.classes] == values
    assert result.confusion == expected.confusion
    assert result.mean_iou == pytest.approx(expected.mean_iou)
    assert len(result.slice_mean_iou) == 6
