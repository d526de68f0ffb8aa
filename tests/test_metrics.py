"""IoU and Dice: hand-computed cases, an independent implementation, NumPy vs torch, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from bone_apps.core.errors import LabelError, ShapeMismatchError
from bone_apps.core.io.writer import write_volume
from bone_apps.core.score.metrics import (
    confusion_matrix,
    confusion_matrix_torch,
    scores_from_confusion,
)
from bone_apps.core.score.scoring import compute_iou, result_csv, score_stacks, write_result_json


def test_hand_computed_case():
    reference = np.array([[0, 0, 1, 1], [2, 2, 1, 0]], np.uint8)
    prediction = np.array([[0, 1, 1, 1], [2, 0, 1, 0]], np.uint8)
    cm = confusion_matrix(reference, prediction, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    result = scores_from_confusion(cm, ["background", "bone", "pores"])
    background, bone, pores = result.classes
    assert background.iou == pytest.approx(2 / 4) and background.dice == pytest.approx(4 / 6)
    assert bone.iou == pytest.approx(3 / 4) and bone.dice == pytest.approx(6 / 7)
    assert pores.iou == pytest.approx(1 / 2) and pores.dice == pytest.approx(2 / 3)
    assert (bone.reference_voxels, bone.predicted_voxels, bone.intersection) == (3, 4, 3)
    assert result.mean_iou == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert result.voxels == 8
    # Dice = 2 IoU / (1 + IoU) for every class.
    for c in result.classes:
        assert c.dice == pytest.approx(2 * c.iou / (1 + c.iou))


def test_absent_class_is_absent_not_zero_or_one_and_background_can_be_left_out():
    reference = np.array([0, 0, 1, 1], np.uint8)
    prediction = np.array([0, 1, 1, 1], np.uint8)
    result = scores_from_confusion(confusion_matrix(reference, prediction, 3))
    assert result.classes[2].iou is None and result.classes[2].dice is None
    assert result.mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)
    without_background = scores_from_confusion(confusion_matrix(reference, prediction, 3),
                                               ignore_background=True)
    assert without_background.mean_iou == pytest.approx(2 / 3)


@pytest.mark.parametrize("num_classes", [2, 3, 4, 7, 20])
def test_equals_torchmetrics_on_random_volumes(num_classes):
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(num_classes)
    dtype = np.uint8 if num_classes < 10 else np.uint16
    reference = rng.integers(0, num_classes, (6, 33, 47)).astype(dtype)
    prediction = np.where(rng.random(reference.shape) < 0.3,
                          rng.integers(0, num_classes, reference.shape), reference).astype(dtype)
    ours = scores_from_confusion(confusion_matrix(reference, prediction, num_classes))
    metric = MulticlassJaccardIndex(num_classes=num_classes, average=None)
    theirs = metric(torch.from_numpy(prediction.astype(np.int64)),
                    torch.from_numpy(reference.astype(np.int64)))
    assert np.allclose([c.iou for c in ours.classes], theirs.numpy(), atol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3, 5, 17])
def test_numpy_and_torch_counts_are_identical(num_classes):
    import torch

    rng = np.random.default_rng(1)
    size = (1 << 18) + 12345  # more than one counting block, with a ragged end
    reference = rng.integers(0, num_classes, size).astype(np.uint8)
    prediction = rng.integers(0, num_classes, size).astype(np.uint8)
    cpu = confusion_matrix(reference, prediction, num_classes)
    tensors = confusion_matrix_torch(torch.from_numpy(reference), torch.from_numpy(prediction),
                                     num_classes)
    assert np.array_equal(cpu, tensors.numpy())
    assert cpu.sum() == size


@pytest.mark.gpu
def test_cuda_counts_equal_cpu_counts(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rng = np.random.default_rng(2)
    reference = rng.integers(0, 3, (8, 64, 64)).astype(np.uint8)
    prediction = rng.integers(0, 3, (8, 64, 64)).astype(np.uint8)
    write_volume(tmp_path / "r", reference)
    write_volume(tmp_path / "p", prediction)
    gpu = compute_iou(tmp_path / "r", tmp_path / "p", device="cuda")
    cpu = compute_iou(tmp_path / "r", tmp_path / "p", device="cpu")
    assert gpu.confusion == cpu.confusion


def _stacks(tmp_path, shape=(12, 40, 50), classes=3, seed=3):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, classes, shape).astype(np.uint8)
    prediction = np.where(rng.random(shape) < 0.1, rng.integers(0, classes, shape),
                          reference).astype(np.uint8)
    write_volume(tmp_path / "ref", reference)
    write_volume(tmp_path / "pred.tif", prediction)
    return reference, prediction


def test_streaming_over_slices_equals_in_memory_result(tmp_path):
    reference, prediction = _stacks(tmp_path)
    streamed = compute_iou(tmp_path / "ref", tmp_path / "pred.tif", device="cpu")
    in_memory = scores_from_confusion(confusion_matrix(reference, prediction, 3))
    assert streamed.confusion == in_memory.confusion
    assert streamed.mean_iou == pytest.approx(in_memory.mean_iou)
    assert len(streamed.slice_mean_iou) == 12
    z = 5
    per_slice = scores_from_confusion(confusion_matrix(reference[z], prediction[z], 3))
    assert streamed.slice_mean_iou[z] == pytest.approx(per_slice.mean_iou)


def test_progress_is_reported_for_every_slice(tmp_path):
    _stacks(tmp_path)
    job = score_stacks(tmp_path / "ref", tmp_path / "pred.tif", device="cpu")
    progress = []
    while True:
        try:
            progress.append(next(job).done)
        except StopIteration:
            break
    assert progress == list(range(13))


def test_undeclared_labels_count_as_classes_and_declared_ones_are_checked(tmp_path):
    reference = np.zeros((3, 4, 4), np.uint8)
    prediction = reference.copy()
    prediction[2, 0, 0] = 4
    write_volume(tmp_path / "ref", reference)
    write_volume(tmp_path / "pred", prediction)
    result = compute_iou(tmp_path / "ref", tmp_path / "pred", device="cpu")
    assert len(result.classes) == 5
    assert result.classes[4].predicted_voxels == 1 and result.classes[4].iou == 0.0
    assert [c.present for c in result.classes] == [True, False, False, False, True]
    with pytest.raises(LabelError) as err:
        compute_iou(tmp_path / "ref", tmp_path / "pred", class_names=["bg", "bone", "pores"],
                    device="cpu")
    assert "pred" in str(err.value) and "label 4" in str(err.value)


def test_shape_mismatch_is_an_error(tmp_path):
    write_volume(tmp_path / "ref", np.zeros((3, 4, 4), np.uint8))
    write_volume(tmp_path / "pred", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ShapeMismatchError):
        compute_iou(tmp_path / "ref", tmp_path / "pred", device="cpu")


def test_json_and_csv_exports(tmp_path):
    import json

    _stacks(tmp_path)
    result = compute_iou(tmp_path / "ref", tmp_path / "pred.tif",
                         class_names=["background", "bone", "pores"], device="cpu")
    write_result_json(result, tmp_path / "scores.json")
    data = json.loads((tmp_path / "scores.json").read_text())
    assert [c["name"] for c in data["classes"]] == ["background", "bone", "pores"]
    assert set(data["classes"][0]) >= {"label", "name", "iou", "dice", "reference_voxels",
                                       "predicted_voxels", "intersection"}
    assert data["mean_iou"] == pytest.approx(result.mean_iou)
    assert data["voxels"] == 12 * 40 * 50
    lines = result_csv(result).splitlines()
    assert lines[0].startswith("label,name,iou") and lines[-1].startswith("mean,")
    assert len(lines) == 5
