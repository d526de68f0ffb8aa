"""The fitting engine end to end on tiny sample scans: learning, outputs, bitwise
reproducibility, resume equivalence, transfer learning, modes and bad inputs."""

from __future__ import annotations

import csv
import json
import threading

import pytest
import torch

from bone_apps.core.data.normalize import StatsProgress
from bone_apps.core.errors import DataCheckError, FitConfigError, OutputExistsError
from bone_apps.core.fit import loop as fit_module
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.fit.loop import fit, run_fit
from bone_apps.core.fit.records import EpochEnd, FitFinished, FitMessage, StepProgress
from bone_apps.core.model.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(sample_root, cache, out, **changes) -> FitConfig:
    values = dict(out=str(out), data=str(sample_root), patch=32, batch=8, epochs=2,
                  init="random", workers=2, cache_dir=str(cache), profile=False,
                  reproducible=True)
    values.update(changes)
    return FitConfig(**values)


def _two_pairs(sample_root) -> tuple:
    ids = sorted(p.name for p in (sample_root / "scans").iterdir())[:2]
    return tuple((str(sample_root / "scans" / i), str(sample_root / "masks" / i)) for i in ids)


def _collect(config, **kwargs):
    events = []
    result = run_fit(config, events.append, **kwargs)
    return result, events


def _model_state(out):
    return torch.load(out / "checkpoint.pth", weights_only=True)["model"]


def _same_bytes(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


@pytest.fixture(scope="module")
def reference(sample_root, cache, tmp_path_factory):
    """A reproducible 2-epoch fit with loader workers and FLOP counting."""
    out = tmp_path_factory.mktemp("fits") / "a"
    config = _config(sample_root, cache, out, profile=True)
    result, events = _collect(config)
    return config, result, events


def test_fit_learns_far_above_chance(reference):
    _, result, events = reference
    assert result.status == "completed" and result.epochs_done == 2
    # Predicting background everywhere scores about 0.3 mean IoU on these scans.
    assert result.best_val_iou > 0.6
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epochs] == [1, 2]
    assert epochs[-1].train_loss < epochs[0].train_loss


def test_fit_reports_progress_and_writes_every_output(reference):
    config, result, events = reference
    out = result.out
    kinds = [type(e) for e in events]
    assert StatsProgress in kinds and FitMessage in kinds and StepProgress in kinds
    assert isinstance(events[-1], FitFinished) and events[-1].result is result
    steps = [e for e in events if isinstance(e, StepProgress) and e.epoch == 1]
    assert {e.phase for e in steps} == {"train", "val"} and steps[0].lr == pytest.approx(1e-3)
    for name in ("model.pth", "checkpoint.pth", "config.json", "split.json", "log.csv",
                 "fit.log", "summary.json"):
        assert (out / name).is_file(), name
    assert FitConfig.load(out / "config.json") == config
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"lr", "train_loss", "val_loss", "train_iou", "val_iou", "val_iou_bone",
            "val_iou_pores", "epoch_time_s", "peak_ram_mb"} <= set(rows[0])
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine annealing, stepped per epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_epoch"] == result.best_epoch
    assert summary["complexity"]["flops_per_batch"] > 0
    assert summary["complexity"]["parameters"] > 1_000_000
    assert summary["peaks"]["peak_ram_bytes"] > 0
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 1
    log = (out / "fit.log").read_text()
    assert "GFLOPs per batch" in log and "epoch 2/2" in log
    state, meta = load_weights(out / "model.pth")
    assert meta["dims"] == "2d" and meta["arch"] == "Unet" and meta["classes"] == 3
    assert meta["class_names"] == ["background", "bone", "pores"] and meta["norm"] == "zscore"
    assert meta["patch_size"] == 32 and meta["required_multiple"] == 32
    assert meta["best_epoch"] == result.best_epoch
    assert meta["metrics"]["val_iou"] == pytest.approx(result.best_val_iou)


def test_reproducible_runs_give_bitwise_identical_weights(reference, sample_root, cache, tmp_path):
    config, result, _ = reference
    again, _ = _collect(config.replace(out=str(tmp_path / "b")))
    assert again.best_val_iou == result.best_val_iou
    assert _same_bytes(_model_state(result.out), _model_state(again.out))
    assert _same_bytes(load_weights(result.out / "model.pth")[0],
                       load_weights(again.out / "model.pth")[0])


def test_stopped_and_resumed_run_ends_like_an_uninterrupted_one(reference, tmp_path):
    config, result, _ = reference
    config = config.replace(out=str(tmp_path / "c"))
    stop = threading.Event()
    events = []
    for event in fit(config, stop=stop):
        events.append(event)
        if isinstance(event, StepProgress) and event.phase == "train" and event.step == 3:
            stop.set()  # as Ctrl-C or the Stop button would
    stopped = events[-1].result
    assert stopped.status == "stopped" and stopped.resume_hint.endswith(str(tmp_path / "c"))
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["status"] == "stopped"
    state = torch.load(tmp_path / "c" / "checkpoint.pth", weights_only=True)["state"]
    assert (state["epoch"], state["phase"], state["batch"]) == (0, "train", 3)

    resumed, events = _collect(FitConfig.load(tmp_path / "c" / "config.json"), resume=True)
    assert resumed.status == "completed" and resumed.epochs_done == 2
    first = next(e for e in events if isinstance(e, StepProgress))
    assert (first.epoch, first.step) == (1, 4)
    assert _same_bytes(_model_state(result.out), _model_state(resumed.out))
    assert resumed.best_val_iou == result.best_val_iou
    rows = list(csv.DictReader((tmp_path / "c" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_an_earlier_run_is_not_overwritten_by_accident(reference):
    config, result, _ = reference
    with pytest.raises(OutputExistsError, match="--resume"):
        run_fit(config)
    with pytest.raises(FitConfigError, match="lr"):
        run_fit(config.replace(lr=0.01), resume=True)
    assert (result.out / "model.pth").is_file()


def test_transfer_learning_with_a_new_head(reference, sample_root, cache, tmp_path):
    _, result, _ = reference
    weights = str(result.out / "model.pth")
    config = _config(sample_root, cache, tmp_path / "t", data=None, pairs=_two_pairs(sample_root),
                     epochs=1, workers=0, init=weights,
                     class_names=("background", "bone", "pores", "marrow"))
    transferred, events = _collect(config)
    notes = " ".join(e.text for e in events if isinstance(e, FitMessage))
    assert "new head for 4 classes (the file has 3)" in notes
    _, meta = load_weights(transferred.out / "model.pth")
    assert meta["classes"] == 4 and meta["class_names"][-1] == "marrow"

    same, events = _collect(config.replace(out=str(tmp_path / "s"), class_names=()))
    assert any("all from" in e.text for e in events if isinstance(e, FitMessage))
    with pytest.raises(FitConfigError, match="does not fit this model"):
        run_fit(config.replace(out=str(tmp_path / "x"), encoder="resnet34"))


@pytest.mark.parametrize("dims", ["2.5d", "3d"])
def test_25d_and_3d_fits(dims, sample_root, cache, tmp_path, monkeypatch):
    changes = {"dims": dims, "context": 1} if dims == "2.5d" else {
        "dims": dims, "arch": "BasicUNet", "encoder": "tiny", "patch_depth": 16}
    if dims == "2.5d":
        # A network fvcore cannot trace must not stop fitting.
        def untraceable(*args, **kwargs):
            raise RuntimeError("unsupported operator")

        import fvcore.nn

        monkeypatch.setattr(fvcore.nn, "FlopCountAnalysis", untraceable)
    config = _config(sample_root, cache, tmp_path / dims, pairs=_two_pairs(sample_root), data=None,
                     epochs=1, workers=0, reproducible=False, profile=True, **changes)
    result, events = _collect(config)
    assert result.status == "completed"
    _, meta = load_weights(result.out / "model.pth")
    assert meta["dims"] == dims
    if dims == "2.5d":
        assert meta["in_channels"] == 3 and meta["context"] == 1
        assert any("fvcore could not trace" in e.text for e in events if isinstance(e, FitMessage))
    else:
        assert meta["patch_depth"] == 16 and meta["required_multiple"] == 16


def test_easy_mode_shrinks_patch_and_batch_to_the_data(sample_root, cache, tmp_path):
    config = FitConfig(out=str(tmp_path / "easy"), pairs=_two_pairs(sample_root), easy=True,
                       epochs=1, init="random", workers=0, cache_dir=str(cache), profile=False)
    assert (config.patch, config.batch) == (256, 64)
    result, events = _collect(config)
    notes = [e.text for e in events if isinstance(e, FitMessage) and e.level == "note"]
    assert any("patches shrink from 256 to 64 px" in n for n in notes)
    assert any("batch shrinks from 64" in n for n in notes)
    saved = FitConfig.load(result.out / "config.json")
    assert saved.patch == 64 and saved.batch < 64 and result.status == "completed"


def test_bad_pairs_are_all_listed_before_fitting(sample_root, cache, tmp_path):
    import numpy as np

    from bone_apps.core.io.writer import write_volume

    scans = sorted((sample_root / "scans").iterdir())
    write_volume(tmp_path / "small_mask", np.zeros((16, 32, 32), np.uint8))
    write_volume(tmp_path / "label5", np.full((16, 64, 64), 5, np.uint8))
    pairs = ((str(scans[0]), str(tmp_path / "small_mask")),
             (str(scans[1]), str(tmp_path / "missing")),
             (str(scans[2]), str(tmp_path / "label5")),
             (str(scans[3]), str(sample_root / "masks" / scans[3].name)))
    config = _config(sample_root, cache, tmp_path / "bad", data=None, pairs=pairs,
                     class_names=("background", "bone", "pores"))
    with pytest.raises(DataCheckError) as info:
        run_fit(config)
    message = str(info.value)
    assert "2 problems" in message and "choose the mask that belongs" in message
    assert "missing does not exist" in message
    # Labels are checked once shapes and files are right; every offending mask is named.
    fixed = (pairs[0][0], str(sample_root / "masks" / scans[0].name))
    config = config.replace(pairs=(fixed, pairs[2], pairs[3]), out=str(tmp_path / "bad2"))
    with pytest.raises(DataCheckError, match=r"label5 holds label\(s\) 5"):
        run_fit(config)
    assert not (tmp_path / "bad2" / "model.pth").exists()


def test_fit_config_json_round_trip_and_checks(tmp_path):
    config = FitConfig(out="o", pairs=(("a", "b"),), class_names=("x", "y"), val_scans=("a",))
    path = config.save(tmp_path / "c.json")
    assert FitConfig.load(path) == config
    with pytest.raises(FitConfigError, match="valid options are"):
        FitConfig.from_dict({"out": "o", "learning_rate": 1})
    for bad, message in (({"dims": "4d"}, "2d, 2.5d, 3d"), ({"loss": "l1"}, "jaccard"),
                         ({"max_overlap": 2.0}, "between 0"), ({"init": "vgg"}, "random"),
                         ({"data": None, "pairs": ()}, "no scans")):
        with pytest.raises(FitConfigError, match=message):
            config.replace(**bad).validate()


def test_patch_size_must_suit_the_network(sample_root, cache, tmp_path):
    config = _config(sample_root, cache, tmp_path / "p", patch=40)
    with pytest.raises(FitConfigError, match="use 32 or 64"):
        run_fit(config)


def test_ctrl_c_handler_requests_a_stop():
    import os
    import signal

    from bone_apps.cli.fit import _install_stop_handler

    stop = threading.Event()
    previous = _install_stop_handler(stop)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(2)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts
            os.kill(os.getpid(), signal.SIGINT)
            stop.wait(1)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.gpu
def test_mixed_precision_on_cuda(sample_root, cache, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = "cuda:all" if torch.cuda.device_count() > 1 else "cuda"
    config = _config(sample_root, cache, tmp_path / "gpu", epochs=1, device=device,
                     reproducible=False)
    result, events = _collect(config)
    assert result.status == "completed"
    assert any("precision fp16" in e.text for e in events if isinstance(e, FitMessage))
    assert fit_module  # the module under test


def test_stop_during_the_data_checks_ends_before_fitting(sample_root, tmp_path):
    from bone_apps.core.errors import Cancelled
    from bone_apps.core.fit.loop import fit

    stop = threading.Event()
    stop.set()  # pressed while the scans are still being checked
    out = tmp_path / "run"
    # A fresh statistics cache, so the checks have real work to do.
    job = fit(_config(sample_root, tmp_path / "cache", out), stop=stop)
    with pytest.raises(Cancelled):
        for _ in job:
            pass
    assert not (out / "model.pth").exists() and not (out / "checkpoint.pth").exists()
