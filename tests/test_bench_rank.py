"""`bone bench` (a grid fitted, predicted and scored with its cost figures) and `bone rank`
(the paper's weighted score and Table 7's sweep, checked against hand-computed numbers)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bone_apps.cli import main
from bone_apps.core.errors import BoneAppsError
from bone_apps.core.evaluate.rank import rank, sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Three models; GPU utilization measured for none, batch equal for all.
TABLE = [
    {"name": "A", "miou": 0.97, "batch": 64, "gpu_util": None, "flops": 100.0, "params": 10,
     "vram": 8.0, "fit_time": 300.0},
    {"name": "B", "miou": 0.965, "batch": 64, "gpu_util": None, "flops": 50.0, "params": 20,
     "vram": 4.0, "fit_time": 100.0},
    {"name": "C", "miou": 0.90, "batch": 64, "gpu_util": None, "flops": 200.0, "params": 10,
     "vram": 6.0, "fit_time": 200.0},
]
# Normalized by hand: mIoU (higher is better) over [0.90, 0.97]; batch equal for all: 1;
# FLOPs, params, VRAM and time (lower is better) over their ranges.
TERMS = {
    "A": {"miou": 1.0, "batch": 1.0, "flops": 1 - 50 / 150, "params": 1.0, "vram": 0.0, "fit_time": 0.0},
    "B": {"miou": 0.065 / 0.07, "batch": 1.0, "flops": 1.0, "params": 0.0, "vram": 1.0, "fit_time": 1.0},
    "C": {"miou": 0.0, "batch": 1.0, "flops": 0.0, "params": 1.0, "vram": 0.5, "fit_time": 0.5},
}


def _by_hand(name: str, w: float) -> float:
    """w * mIoU_norm + (1 - w) / 5 * the five measured efficiency terms (GPU util left out)."""
    t = TERMS[name]
    return w * t["miou"] + (1 - w) / 5 * (t["batch"] + t["flops"] + t["params"] + t["vram"] + t["fit_time"])


def test_rank_reproduces_hand_computed_scores_with_a_metric_null_for_every_model():
    ranking = rank(TABLE)  # the paper's 0.85
    assert ranking.measured == ("batch", "flops", "params", "vram", "fit_time")
    assert ranking.left_out == {"gpu_util": "not measured for any model"}
    assert ranking.efficiency_weight == pytest.approx(0.15 / 5)
    assert [m.name for m in ranking.models] == ["A", "B", "C"]
    # A: 0.85 + 0.03 * (1 + 2/3 + 1 + 0 + 0) = 0.93; B: 0.85 * 13/14 + 0.03 * 4; C: 0.03 * 3.
    assert ranking.models[0].score == pytest.approx(0.93, abs=1e-12)
    assert ranking.models[1].score == pytest.approx(0.85 * 13 / 14 + 0.12, abs=1e-12)
    assert ranking.models[2].score == pytest.approx(0.09, abs=1e-12)
    for model in ranking.models:
        assert model.score == pytest.approx(_by_hand(model.name, 0.85), abs=1e-12)
        assert model.terms["gpu_util"] is None
        for metric, value in TERMS[model.name].items():
            assert model.terms[metric] == pytest.approx(value, abs=1e-12)

    # Table 7's sweep: B overtakes A once efficiency weighs enough (below w = 0.789).
    table7 = sweep(TABLE)
    assert [row["miou_weight"] for row in table7] == [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7]
    for row in table7:
        w = row["miou_weight"]
        expected = sorted("ABC", key=lambda n: -_by_hand(n, w))
        assert [t["name"] for t in row["top"]] == expected
        scores = [_by_hand(n, w) for n in expected]
        assert [t["score"] for t in row["top"]] == pytest.approx(scores, abs=1e-12)
        assert row["efficiency_weight_per_metric"] == pytest.approx((1 - w) / 5, abs=1e-12)
    assert [row["top"][0]["name"] for row in table7] == ["A"] * 5 + ["B"] * 2
    assert table7[0]["top"][0]["score"] == 1.0  # mIoU alone: the best model scores 1


def test_rank_edge_cases():
    # A metric null for some models only is left out for all, naming them.
    partial = [dict(r) for r in TABLE]
    partial[2]["flops"] = None
    assert rank(partial).left_out["flops"] == "not measured for C"
    # Every metric equal: every model scores 1.
    same = [{**TABLE[0], "name": n} for n in "XY"]
    assert [m.score for m in rank(same).models] == [1.0, 1.0]
    with pytest.raises(BoneAppsError, match="no mIoU"):
        rank([{**TABLE[0], "miou": None}, TABLE[1]])
    with pytest.raises(BoneAppsError, match="between 0 and 1"):
        rank(TABLE, 1.5)


def test_rank_command_prints_writes_json_and_refuses_in_one_line(tmp_path, capsys):
    folder = tmp_path / "grid"
    folder.mkdir()
    (folder / "bench.json").write_text(json.dumps({"complete": True, "rows": TABLE}))
    out = tmp_path / "rank.json"
    assert main(["rank", str(folder), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left out: GPU util (not measured for any model)" in printed
    assert "0.75  0.0500  1. B" in printed
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["models"]] == ["A", "B", "C"]
    assert data["models"][0]["score"] == pytest.approx(0.93, abs=1e-12)
    assert data["models"][1]["terms"]["miou"] == pytest.approx(13 / 14, abs=1e-12)
    assert data["sweep"][6] == {"miou_weight": 0.7, "efficiency_weight_per_metric": pytest.approx(0.06),
                                "top": [{"name": "B", "score": pytest.approx(_by_hand("B", 0.7))},
                                        {"name": "A", "score": pytest.approx(_by_hand("A", 0.7))},
                                        {"name": "C", "score": pytest.approx(_by_hand("C", 0.7))}]}
    assert main(["rank", str(folder), "--json", str(out)]) == 2  # exists: --overwrite replaces it
    assert "--overwrite" in capsys.readouterr().err
    assert main(["rank", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["rank", str(folder), "--miou-weight", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# `bone bench` on real scans


def _bench_options(root: Path, cache: Path) -> list[str]:
    return ["--data", str(root), "--test-scans", "bone_00", "bone_03", "--epochs", "1",
            "--batch", "8", "--patches-per-tile", "2", "--init", "random", "--workers", "0",
            "--device", "cpu", "--val-slices", "1", "--cache-dir", str(cache), "--stats-workers", "1"]


@pytest.fixture(scope="module")
def six_scans(tmp_path_factory) -> Path:
    from bone_apps.core.data.synthetic import write_sample_dataset

    root = tmp_path_factory.mktemp("six")
    write_sample_dataset(root, scans=6, seed=2, shape=(8, 64, 64))
    return root


def test_bench_fits_scores_and_measures_each_configuration(six_scans, cache, tmp_path, capsys):
    import warnings

    import torch

    with warnings.catch_warnings():  # fvcore scripts a function at import, deprecated in torch
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    from bone_apps.core.model.models import model_from_meta
    from bone_apps.core.model.weights import load_weights

    out = tmp_path / "grid"
    configs = ["Unet:mobilenet_v2:32", "FPN:mobilenet_v2:32:4"]
    assert main(["bench", "--out", str(out), "--configs", *configs, *_bench_options(six_scans, cache)]) == 0
    assert "bone rank" in capsys.readouterr().out
    data = json.loads((out / "bench.json").read_text())
    assert data["complete"] and data["test_scans"] == ["bone_00", "bone_03"]
    assert [r["name"] for r in data["rows"]] == configs
    for row in data["rows"]:
        run = out / row["run"]
        split = json.loads((run / "split.json").read_text())
        assert not {"bone_00", "bone_03"} & set(split["train"] + split["val"])
        assert [s["scan"] for s in row["scans"]] == ["bone_00", "bone_03"]
        assert row["miou"] == pytest.approx(statistics.mean(s["miou"] for s in row["scans"]), abs=1e-12)
        assert row["iou"]["bone"] == pytest.approx(
            statistics.mean(s["iou"]["bone"] for s in row["scans"]), abs=1e-12)
        fitted = json.loads((run / "config.json").read_text())
        assert (fitted["arch"], fitted["patch"]) == (row["arch"], 32)
        assert row["batch"] == fitted["batch"] == (4 if row["arch"] == "FPN" else 8)
        # Cost figures measured independently: parameters and FLOPs of the fitted network.
        _, meta = load_weights(run / "model.pth")
        model = model_from_meta(meta).eval()
        assert row["params"] == sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            flops = FlopCountAnalysis(model, torch.zeros(row["batch"], 1, 32, 32))
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            assert row["flops"] == int(flops.total())
        summary = json.loads((run / "summary.json").read_text())
        assert row["fit_time"] == summary["times"]["fit_loop_s"] > 0
        # On the CPU there is no GPU figure: null, never 0.
        assert row["gpu_util"] is None and row["vram"] is None

    # Run again: everything is kept, nothing is fitted twice, the rows are the same.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/model.pth")}
    assert main(["bench", "--out", str(out), "--configs", *configs, *_bench_options(six_scans, cache)]) == 0
    assert capsys.readouterr().out.count("fit finished earlier, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert json.loads((out / "bench.json").read_text())["rows"] == data["rows"]

    assert main(["rank", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left out: GPU util (not measured for any model)" in printed
    assert "left out: VRAM (not measured for any model)" in printed


@pytest.mark.parametrize("change, message", [
    (["--test-scans", "bone_09"], "bone_09, which are not among the scans"),
    (["--test-scans", "bone_00", "bone_01", "bone_02", "bone_03", "bone_04"], "pool has no validation scan"),
    (["--configs", "Unet:resnet18"], "is not ARCH:ENCODER:PATCH"),
    (["--configs", "Nonet:resnet18:32"], "architecture 'Nonet' is not available"),
])
def test_bench_refusals_exit_2_with_one_line(six_scans, tmp_path, capsys, change, message):
    args = {"--test-scans": ["bone_00"], "--configs": ["Unet:resnet18:32"]}
    args[change[0]] = change[1:]
    out = tmp_path / "grid"
    flat = [item for flag, values in args.items() for item in (flag, *values)]
    assert main(["bench", "--out", str(out), "--data", str(six_scans), "--init", "random", *flat]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()
