"""`bone cv`: scan-level folds, the Table 6 summary, a real cross-validation, stop and resume."""

from __future__ import annotations

import json
import statistics
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bone_apps.cli import main
from bone_apps.core.errors import FitConfigError
from bone_apps.core.evaluate.folds import make_folds, read_order_file
from bone_apps.core.evaluate.summary import summarize, table6_markdown

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The paper's Table 3: the fixed order of its 20 scans and their test folds.
TABLE3 = """Order\tScan ID\tTest fold
1\tUF_Mammals_31151_HRU\t1
2\tOMNH_Mammals_44262_HRU\t
3\t2R_2U_HF\t
4\tOMNH_Mammals_53994_HRU\t
5\tUWBM_Mamm_81969_HRU\t2
6\tUWBM_Mamm_78743_FTFi\t
7\t12R_12U_HF\t
8\tAMNH_Mammals_M-206440_mixed\t
9\tOMNH_Mammals_53994_FTFi\t3
10\tUWBM_Mamm_81969_FTFi\t
11\tUF_Mammals_23593-24550_HF\t
12\tUAM_Mamm_67696_HF\t
13\t19R_19U_HF\t4
14\t1R_1U_HF\t
15\tAMNH_Mammals_M-89009_F\t
16\t7R_7U_HF\t
17\tUAM_Mamm_24789_FTFi\t5
18\t5R_5U_HF\t
19\tZMB_Mam_30740_HRU\t
20\tUAM_Mamm_67696_TFiRU\t
"""

# Table 6: cell mIoU (mean, SD over the fold's four test scans) and mDice, fold x seed.
SEEDS = (42, 1701, 1864)
TABLE6_IOU = [[(0.9731, 0.0099), (0.9738, 0.0106), (0.9723, 0.0099)],
              [(0.8463, 0.2501), (0.8533, 0.2287), (0.8523, 0.2309)],
              [(0.9420, 0.0376), (0.9301, 0.0497), (0.9456, 0.0298)],
              [(0.8883, 0.1438), (0.8913, 0.1488), (0.8508, 0.1740)],
              [(0.9542, 0.0395), (0.9264, 0.0939), (0.8995, 0.1492)]]
TABLE6_DICE = [[(0.9864, 0.0051), (0.9867, 0.0054), (0.9860, 0.0051)],
               [(0.8992, 0.1724), (0.9066, 0.1538), (0.9057, 0.1557)],
               [(0.9699, 0.0201), (0.9633, 0.0270), (0.9719, 0.0158)],
               [(0.9358, 0.0875), (0.9372, 0.0907), (0.9115, 0.1121)],
               [(0.9763, 0.0211), (0.9599, 0.0533), (0.9418, 0.0902)]]
# Its margins: per fold across seeds, per seed across folds, and the grand figure.
TABLE6_BY_FOLD = [((0.9731, 0.0092), (0.9863, 0.0047)), ((0.8506, 0.2142), (0.9038, 0.1455)),
                  ((0.9393, 0.0367), (0.9683, 0.0198)), ((0.8768, 0.1425), (0.9282, 0.0889)),
                  ((0.9267, 0.0972), (0.9593, 0.0577))]
TABLE6_BY_SEED = [((0.9208, 0.0522), (0.9535, 0.0358)), ((0.9150, 0.0452), (0.9507, 0.0303)),
                  ((0.9041, 0.0546), (0.9434, 0.0356))]
TABLE6_GRAND = ((0.9133, 0.0476), (0.9492, 0.0318))


# ----------------------------------------------------------------------------------------------
# Folds


def test_table3_order_gives_the_papers_folds_and_pools(tmp_path):
    ids = [line.split("\t")[1] for line in TABLE3.splitlines()[1:]]
    shuffled = sorted(ids)  # the data lists scans by name; the file fixes the order
    order_file = tmp_path / "order.tsv"
    order_file.write_text(TABLE3)
    folds = make_folds(shuffled, 5, order_file=order_file)
    assert list(folds.order) == ids
    assert [list(t) for t in folds.tests] == [ids[i:i + 4] for i in range(0, 20, 4)]
    assert list(folds.pool(1)) == ids[4:]  # "Training/Validation Pool 1 consisted of scans 5-20"
    assert list(folds.pool(3)) == ids[:8] + ids[12:]


@pytest.mark.parametrize("n, k", [(7, 3), (6, 2), (20, 5), (5, 5), (11, 4)])
def test_every_scan_is_tested_exactly_once_and_never_in_its_pool(n, k):
    ids = [f"scan_{i:02d}" for i in range(n)]
    folds = make_folds(ids, k, order_seed=3)
    tested = [s for t in folds.tests for s in t]
    assert sorted(tested) == ids  # every scan once
    sizes = [len(t) for t in folds.tests]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    for f in range(1, k + 1):
        pool = folds.pool(f)
        assert not set(pool) & set(folds.tests[f - 1])
        assert sorted(pool + folds.tests[f - 1]) == ids
        assert list(pool) == [i for i in folds.order if i in pool]  # in sequence order
    assert make_folds(ids, k, order_seed=3) == folds  # the order is fixed by its seed
    assert make_folds(ids, k, order_seed=4).order != folds.order


def test_fold_refusals_are_one_sentence(tmp_path):
    ids = [f"s{i}" for i in range(4)]
    with pytest.raises(FitConfigError, match="--folds 5 is more than the 4 scans"):
        make_folds(ids, 5)
    with pytest.raises(FitConfigError, match="pool has no validation scan"):
        make_folds(ids[:2], 2)
    order = tmp_path / "order.txt"
    order.write_text("s3\ns1\ns0\ns2\n")
    with pytest.raises(FitConfigError, match="holds every --val-scans scan"):
        make_folds(ids, 2, order_file=order, val_scans=["s3", "s1"])
    order.write_text("s3\ns1\ns0\n")
    with pytest.raises(FitConfigError, match="does not list s2"):
        read_order_file(order, ids)
    order.write_text("s3\ns1\ns0\ns9\n")
    with pytest.raises(FitConfigError, match="'s9', which is not a scan"):
        read_order_file(order, ids)


# ----------------------------------------------------------------------------------------------
# Table 6


def _scan_rows() -> list[dict]:
    """Four scan scores per Table 6 cell whose mean and sample SD are the cell's."""
    rows = []
    for f, (iou_cells, dice_cells) in enumerate(zip(TABLE6_IOU, TABLE6_DICE), 1):
        for seed, (iou, dice) in zip(SEEDS, zip(iou_cells, dice_cells)):
            # m ± a twice has mean m and sample SD a * 2 / sqrt(3).
            signs = (1, -1, 1, -1)
            for k, sign in enumerate(signs):
                rows.append({"fold": f, "seed": seed, "scan": f"f{f}s{k}",
                             "miou": iou[0] + sign * iou[1] * np.sqrt(3) / 2,
                             "mdice": dice[0] + sign * dice[1] * np.sqrt(3) / 2})
    return rows


def test_summary_reproduces_table6_bottom_row_from_its_15_cell_means():
    # One scan per cell carrying the cell's mean: the margins that use cell means only.
    rows = [{"fold": f, "seed": s, "scan": "x", "miou": TABLE6_IOU[f - 1][j][0],
             "mdice": TABLE6_DICE[f - 1][j][0]} for f in range(1, 6) for j, s in enumerate(SEEDS)]
    table = summarize(rows, 5, SEEDS)
    for row, ((iou, iou_sd), (dice, dice_sd)) in zip(table["per_seed"], TABLE6_BY_SEED):
        assert (round(row["mean"], 4), round(row["sd"], 4)) == (iou, iou_sd)
        assert (round(row["dice_mean"], 4), round(row["dice_sd"], 4)) == (dice, dice_sd)
    grand = table["grand"]
    assert grand["n"] == 15
    assert (round(grand["mean"], 4), round(grand["sd"], 4)) == TABLE6_GRAND[0] == (0.9133, 0.0476)
    assert (round(grand["dice_mean"], 4), round(grand["dice_sd"], 4)) == TABLE6_GRAND[1]


def test_summary_reproduces_the_whole_of_table6_from_scan_scores():
    table = summarize(_scan_rows(), 5, SEEDS)
    cells = {(c["fold"], c["seed"]): c for c in table["cells"]}
    for f in range(1, 6):
        for j, s in enumerate(SEEDS):
            cell = cells[(f, s)]
            assert cell["n"] == 4
            assert cell["mean"] == pytest.approx(TABLE6_IOU[f - 1][j][0], abs=1e-12)
            assert cell["sd"] == pytest.approx(TABLE6_IOU[f - 1][j][1], abs=1e-12)
            assert cell["dice_sd"] == pytest.approx(TABLE6_DICE[f - 1][j][1], abs=1e-12)
    # The right column pools a fold's scan scores over the seeds (from rounded cells: 1e-4).
    for row, ((iou, iou_sd), (dice, dice_sd)) in zip(table["per_fold"], TABLE6_BY_FOLD):
        assert row["n"] == 12
        assert row["mean"] == pytest.approx(iou, abs=1e-4) and row["sd"] == pytest.approx(iou_sd, abs=1e-4)
        assert row["dice_mean"] == pytest.approx(dice, abs=1e-4)
        assert row["dice_sd"] == pytest.approx(dice_sd, abs=1e-4)
    markdown = table6_markdown(table, SEEDS, [4] * 5)
    lines = markdown.splitlines()
    assert lines[0] == ("| Test fold | mIoU (seed 42) | mIoU (seed 1701) | mIoU (seed 1864) | "
                        "Mean ± SD across seeds |")
    assert lines[2].startswith("| 1 | 0.9731 ± 0.0099 [0.9864 ± 0.0051] | 0.9738 ± 0.0106")
    assert lines[7] == ("| Mean ± SD across folds | 0.9208 ± 0.0522 [0.9535 ± 0.0358] | "
                        "0.9150 ± 0.0452 [0.9507 ± 0.0303] | 0.9041 ± 0.0546 [0.9434 ± 0.0356] | "
                        "**0.9133 ± 0.0476 [0.9492 ± 0.0318]** |")


# ----------------------------------------------------------------------------------------------
# `bone cv` on real scans


@pytest.fixture(scope="module")
def six_scans(tmp_path_factory) -> Path:
    from bone_apps.core.data.synthetic import write_sample_dataset

    root = tmp_path_factory.mktemp("six")
    write_sample_dataset(root, scans=6, seed=1, shape=(8, 64, 64))
    return root


def _options(root: Path, cache: Path) -> list[str]:
    return ["--data", str(root), "--folds", "2", "--seeds", "1", "2", "--order-seed", "5",
            "--epochs", "1", "--patch", "32", "--batch", "8", "--patches-per-tile", "2",
            "--encoder", "mobilenet_v2", "--init", "random", "--workers", "0", "--device", "cpu",
            "--val-slices", "1", "--no-profile", "--reproducible", "--cache-dir", str(cache),
            "--stats-workers", "1"]


def _labels(path: Path) -> np.ndarray:
    return np.stack([tifffile.imread(f) for f in sorted(Path(path).glob("*.tif"))])


def _independent_miou(mask: Path, prediction: Path) -> float:
    ref, pred = _labels(mask), _labels(prediction)
    scores = []
    for c in np.union1d(np.unique(ref), np.unique(pred)):
        inter = np.sum((ref == c) & (pred == c))
        union = np.sum((ref == c) | (pred == c))
        scores.append(inter / union)
    return float(np.mean(scores))


def _figures(data: dict) -> dict:
    return {k: data[k] for k in ("folds", "seeds", "scans", "cells", "per_fold", "per_seed", "grand")}


def test_cv_runs_every_fold_and_seed_and_a_stopped_one_resumes_to_the_same_figures(
        six_scans, cache, tmp_path, capsys):
    from bone_apps.cli import build_parser
    from bone_apps.cli.fit import build_config
    from bone_apps.core.evaluate.cv import CVConfig, cross_validate
    from bone_apps.core.evaluate.runs import RunProgress
    from bone_apps.core.fit.records import StepProgress

    whole = tmp_path / "whole"
    assert main(["cv", "--out", str(whole), *_options(six_scans, cache)]) == 0
    printed = capsys.readouterr().out
    assert "| Mean ± SD across folds |" in printed and "[4/4] fold 2, seed 2" in printed
    data = json.loads((whole / "cv.json").read_text())
    plan = json.loads((whole / "folds.json").read_text())
    ids = sorted(p.name for p in (six_scans / "scans").iterdir())

    # The partition: every scan tested once; no fit ever saw its fold's test scans.
    assert data["complete"] and data["folds"] == plan["folds"]
    assert sorted(s for fold in data["folds"] for s in fold) == ids
    for f, test in enumerate(data["folds"], 1):
        for seed in (1, 2):
            run = whole / f"fold{f}_seed{seed}"
            split = json.loads((run / "split.json").read_text())
            assert not set(test) & set(split["train"] + split["val"])
            assert sorted(split["train"] + split["val"]) == sorted(set(ids) - set(test))
            planned = next(s for s in plan["splits"] if s["fold"] == f and s["seed"] == seed)
            assert (planned["train"], planned["val"]) == (split["train"], split["val"])
            assert (run / "model.pth").is_file()

    # One row per fold x seed x test scan, each scored from its own label stack.
    assert len(data["scans"]) == 12
    assert {(r["fold"], r["seed"], r["scan"]) for r in data["scans"]} == {
        (f, s, i) for f, test in enumerate(data["folds"], 1) for s in (1, 2) for i in test}
    for row in data["scans"][:3]:
        assert row["prediction"] == f"fold{row['fold']}_seed{row['seed']}/pred/{row['scan']}"
        assert row["miou"] == pytest.approx(
            _independent_miou(six_scans / "masks" / row["scan"], whole / row["prediction"]), abs=1e-12)
        assert set(row["iou"]) == set(row["dice"]) == {"background", "bone", "pores"}

    # Table 6's rules, recomputed here from the rows.
    for cell in data["cells"]:
        scores = [r["miou"] for r in data["scans"] if (r["fold"], r["seed"]) == (cell["fold"], cell["seed"])]
        assert cell["mean"] == pytest.approx(statistics.mean(scores), abs=1e-12)
        assert cell["sd"] == pytest.approx(statistics.stdev(scores), abs=1e-12)
    for row in data["per_fold"]:
        scores = [r["miou"] for r in data["scans"] if r["fold"] == row["fold"]]
        assert row["sd"] == pytest.approx(statistics.stdev(scores), abs=1e-12)
    for row in data["per_seed"]:
        means = [c["mean"] for c in data["cells"] if c["seed"] == row["seed"]]
        assert row["sd"] == pytest.approx(statistics.stdev(means), abs=1e-12)
    means = [c["mean"] for c in data["cells"]]
    assert data["grand"]["mean"] == pytest.approx(statistics.mean(means), abs=1e-12)
    assert data["grand"]["sd"] == pytest.approx(statistics.stdev(means), abs=1e-12)
    assert (whole / "cv.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (whole / "cv.csv").read_text().count("\n") == 13
    assert "**" in (whole / "cv.md").read_text()

    # The same cross-validation, stopped in the middle of its last fit, then run again.
    stopped = tmp_path / "stopped"
    args = build_parser().parse_args(["cv", "--out", str(stopped), *_options(six_scans, cache)])
    config = CVConfig(build_config(args), str(stopped), 2, (1, 2), order_seed=5)
    stop = threading.Event()
    events = []
    for event in cross_validate(config, stop):
        events.append(event)
        if (isinstance(event, RunProgress) and event.index == 3 and isinstance(event.event, StepProgress)
                and event.event.step == 2):
            stop.set()
    assert events[-1].result.status == "stopped"
    last = stopped / "fold2_seed2"
    assert (last / "checkpoint.pth").is_file() and not (last / "model.pth").exists()
    assert not json.loads((stopped / "cv.json").read_text())["complete"]
    kept = {p: p.stat().st_mtime_ns for p in stopped.glob("fold*_seed*/model.pth")}
    assert len(kept) == 3
    assert main(["cv", "--out", str(stopped), *_options(six_scans, cache)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("fit finished earlier, kept") == 3 and "resuming the fit in" in printed
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished fits untouched
    again = json.loads((stopped / "cv.json").read_text())
    assert again["complete"] and _figures(again) == _figures(data)
    # The seeds fitted different models (the figures compared are not all the same number).
    assert len({round(c["mean"], 9) for c in data["cells"]}) > 1


def test_cv_refusals_exit_2_with_one_line_and_write_nothing(six_scans, cache, tmp_path, capsys):
    base = ["--data", str(six_scans), "--init", "random", "--cache-dir", str(cache)]
    out = tmp_path / "cv"
    assert main(["cv", "--out", str(out), "--folds", "7", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--folds 7 is more than the 6 scans" in err
    order = tmp_path / "order.txt"
    order.write_text("\n".join(["bone_05", "bone_02", "bone_00", "bone_01", "bone_03", "bone_04"]) + "\n")
    assert main(["cv", "--out", str(out), "--folds", "2", "--order", str(order),
                 "--val-scans", "bone_02", "bone_05", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test fold 1 holds every --val-scans scan" in err
    pairs = []
    for i in ("bone_00", "bone_01"):
        pairs += ["--pair", str(six_scans / "scans" / i), str(six_scans / "masks" / i)]
    assert main(["cv", "--out", str(out), "--folds", "2", *pairs, "--init", "random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pool has no validation scan" in err and "Traceback" not in err
    assert not out.exists()
