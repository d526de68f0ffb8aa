"""Experiments in the windows, driven like a user: a cross-validation and a benchmark grid started
from DLFit's current options (tables filling in, Stop, Start continuing), and IoU's Experiments
tab showing the cv.json and bench.json the core wrote, or one dialog for a file it cannot show."""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from bone_apps.core.evaluate.rank import rank, sweep  # noqa: E402
from bone_apps.core.evaluate.results import read_experiment  # noqa: E402
from bone_apps.core.evaluate.runs import RunStarted, fit_action  # noqa: E402
from bone_apps.core.evaluate.summary import cell_text, table6_markdown, table6_rows  # noqa: E402
from bone_apps.core.fit.records import EpochEnd, StepProgress
from bone_apps.dlfit.window import DLFitWindow  # noqa: E402
from bone_apps.iou.window import IoUWindow  # noqa: E402
from bone_apps.ui.settings import AppSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def four_scans(tmp_path_factory) -> Path:
    from bone_apps.core.data.synthetic import write_sample_dataset

    root = tmp_path_factory.mktemp("four")
    write_sample_dataset(root, scans=4, seed=3, shape=(8, 64, 64))
    return root


def _settings(name: str) -> AppSettings:
    return AppSettings(f"{name}-test-{uuid.uuid4().hex[:8]}")


def _dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def _shot(widget, folder: Path, name: str) -> None:
    """A picture of the widget for a person to look at (nothing cut off, nothing empty)."""
    widget.grab().save(str(folder / f"{name}.png"))


@pytest.fixture
def dlfit(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("BONE_APPS_CACHE", str(tmp_path / "cache"))
    win = DLFitWindow(_settings("dlfit"))
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.experiments is not None:
        win.experiments.stop()
        win.experiments.wait()
    win.pairs.stop_checks()
    for dialog in _dialogs():
        dialog.close()


@pytest.fixture
def iou(qtbot):
    win = IoUWindow(_settings("iou"))
    qtbot.addWidget(win)
    win.show()
    yield win
    for dialog in _dialogs():
        dialog.close()


def _tiny(qtbot, win: DLFitWindow, root: Path, epochs: int = 1):
    """The scans, and Advanced options a CPU fits in a second or two; returns the dialog."""
    win.pairs.add_dataset_root(root)
    qtbot.waitUntil(lambda: not win.pairs.is_checking(), timeout=20000)
    assert not win.experiments_action.isEnabled()  # Easy mode has no experiments
    win.set_mode(advanced=True)
    w = win.advanced.w
    for key, value in (("patch", 32), ("batch", 8), ("patches_per_tile", 2), ("epochs", epochs),
                       ("workers", 0), ("stats_workers", 1)):
        w[key].setValue(value)
    for key, value in (("init", "random"), ("device", "cpu"), ("encoder", "mobilenet_v2")):
        w[key].setCurrentIndex(w[key].findData(value))
    w["profile"].setChecked(False)
    win.experiments_action.trigger()
    dialog = win.experiments
    assert dialog is not None and dialog.isVisible()
    return dialog


def _table6_texts(view) -> list[list[str]]:
    return [[view.cell_text(r, c) for c in range(view.columnCount())] for r in range(view.rowCount())]


def _run(qtbot, dialog, watch=None) -> list[object]:
    records: list[object] = []
    dialog.shown.connect(records.append)
    if watch is not None:
        dialog.shown.connect(watch)
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    assert dialog.is_running() and dialog.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=120000)
    dialog.shown.disconnect(records.append)
    if watch is not None:
        dialog.shown.disconnect(watch)
    assert dialog.last_error == ""
    return records


def test_cross_validation_from_dlfit_fills_table6_stops_resumes_and_iou_shows_it(
        dlfit, iou, qtbot, four_scans, tmp_path, artifacts_dir):
    dialog = _tiny(qtbot, dlfit, four_scans, epochs=2)
    dialog.form.setCurrentIndex(0)
    dialog.form.folds.setValue(2)
    dialog.form.seeds.setText("7")
    dialog.form.order_seed.setValue(5)
    out = tmp_path / "cv"
    dialog.folder.set_path(out)

    def stop_in_second_fit(record: object) -> None:
        event = getattr(record, "event", None)
        if getattr(record, "index", 0) == 1 and isinstance(event, EpochEnd) and event.epoch == 1:
            _shot(dialog, artifacts_dir, "dlfit_experiment_running")
            qtbot.mouseClick(dialog.stop_button, Qt.MouseButton.LeftButton)

    _run(qtbot, dialog, stop_in_second_fit)
    assert dialog.result.status == "stopped" and "Press Start again" in dialog.status.text()
    assert fit_action(out / "fold1_seed7") == "kept" and fit_action(out / "fold2_seed7") == "resume"
    # Fold 1 is in the table (as cv.json says), fold 2 not yet.
    partial = json.loads((out / "cv.json").read_text())
    assert not partial["complete"]
    assert dialog.cv_view.table6.cell_text(0, 1) == cell_text(partial["cells"][0]) != "–"
    assert dialog.cv_view.table6.cell_text(1, 1) == "–"
    assert dialog.runs_bar.value() == 1 and dialog.runs_bar.maximum() == 2

    # Start again: the finished fit is kept, the stopped one resumes, the table completes.
    records = _run(qtbot, dialog)
    assert [r.action for r in records if isinstance(r, RunStarted)] == ["kept", "resume"]
    assert dialog.result.status == "completed" and "cv.json" in dialog.status.text()
    data = json.loads((out / "cv.json").read_text())
    assert data["complete"] and len(data["scans"]) == 4
    assert dialog.runs_bar.value() == 2
    # The table is Table 6 of the scan scores: cells recomputed here, margins as cv.md prints them.
    texts = _table6_texts(dialog.cv_view.table6)
    for f, test in enumerate(data["folds"], 1):
        scores = [r["miou"] for r in data["scans"] if r["fold"] == f]
        assert len(scores) == len(test) == 2
        assert texts[f - 1][1].startswith(f"{statistics.mean(scores):.4f} ± {statistics.stdev(scores):.4f} [")
    grand = statistics.mean(statistics.mean(r["miou"] for r in data["scans"] if r["fold"] == f)
                            for f in (1, 2))
    assert texts[-1][-1].startswith(f"{grand:.4f} ± ")
    head, rows = table6_rows(data, data["seeds"])
    assert texts == rows
    assert all(f"| {' | '.join(row[:-1])} |" in (out / "cv.md").read_text() for row in rows[:-1])
    assert "epoch 2/2" in dialog.log.toPlainText() and "mIoU" in dialog.log.toPlainText()
    qtbot.waitUntil(lambda: not dialog.cv_view.plot_pending(), timeout=20000)
    assert dialog.cv_view.plot.has_picture()  # the per-scan plot of the figures in the table
    _shot(dialog, artifacts_dir, "dlfit_experiment_cv")

    # The IoU window opens the cv.json and shows the same figures, the scans and the plot.
    tab = iou.experiments
    iou.tabs.setCurrentWidget(tab)
    assert tab.open_results(out / "cv.json")
    assert _table6_texts(tab.cv_view.table6) == rows
    assert tab.cv_view.scans_table.rowCount() == 4
    table = tab.cv_view.scans_table
    scans = {table.item(r, 2).text(): table.item(r, 3).text() for r in range(4)}
    assert scans == {r["scan"]: f"{r['miou']:.4f}" for r in data["scans"]}
    assert "Cross-validation: 2 folds of 2, 2 test scans × 1 seed(s) (7)" in tab.file_label.text()
    qtbot.waitUntil(lambda: not tab.cv_view.plot_pending(), timeout=20000)
    assert tab.cv_view.plot.has_picture() and tab.cv_view.plot.pixmap().width() > 100
    iou.resize(1000, 760)
    _shot(iou, artifacts_dir, "iou_experiments_cv")


def test_benchmark_grid_from_dlfit_ranks_configurations_and_iou_reweights_them(
        dlfit, iou, qtbot, four_scans, tmp_path, artifacts_dir):
    dialog = _tiny(qtbot, dlfit, four_scans)
    dialog.form.setCurrentIndex(1)
    assert dialog.results.currentWidget() is dialog.bench_view
    for box, ticked in ((dialog.form.test_scans, {"bone_00"}), (dialog.form.archs, {"Unet", "FPN"})):
        for i in range(box.count()):
            item = box.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in ticked else Qt.CheckState.Unchecked)
    assert dialog.form.encoders.text() == "mobilenet_v2" and dialog.form.patches.text() == "32"
    assert dialog.form.grid_label.text().endswith("= 2 configuration(s)")
    out = tmp_path / "grid"
    dialog.folder.set_path(out)
    updates = [r for r in _run(qtbot, dialog) if hasattr(r, "data")]
    assert [len(u.data["rows"]) for u in updates] == [0, 1, 2]  # the table filled in as fits ended
    data = json.loads((out / "bench.json").read_text())
    assert data["complete"] and data["test_scans"] == ["bone_00"]
    names = {r["name"] for r in data["rows"]}
    assert names == {"Unet:mobilenet_v2:32", "FPN:mobilenet_v2:32"}

    def shown_ranking(view) -> list[tuple[str, str]]:
        table = view.ranking_table
        return [(table.item(r, 1).text(), table.item(r, 2).text()) for r in range(table.rowCount())]

    def expected(weight: float) -> list[tuple[str, str]]:
        return [(m.name, f"{m.score:.4f}") for m in rank(data["rows"], weight).models]

    view = dialog.bench_view
    assert view.rows_table.rowCount() == 2 and shown_ranking(view) == expected(0.85)
    assert "Left out: GPU util, FLOPs, VRAM (not measured for any model)." in view.weights_label.text()
    assert view.sweep_table.rowCount() == 7
    _shot(dialog, artifacts_dir, "dlfit_experiment_bench")

    tab = iou.experiments
    iou.tabs.setCurrentWidget(tab)
    assert tab.open_results(out)  # the folder will do
    view = tab.bench_view
    assert tab.pages.currentWidget() is view and shown_ranking(view) == expected(0.85)
    rows = {view.rows_table.item(r, 0).text(): view.rows_table.item(r, 1).text() for r in range(2)}
    assert rows == {r["name"]: f"{r['miou']:.4f}" for r in data["rows"]}
    view.weight.setValue(1.0)  # mIoU alone: the best mIoU first
    assert shown_ranking(view) == expected(1.0)
    assert shown_ranking(view)[0][0] == max(data["rows"], key=lambda r: r["miou"])["name"]
    top = sweep(data["rows"])[-1]["top"]  # mIoU weight 0.70
    assert view.sweep_table.item(6, 0).text() == "0.70"
    assert view.sweep_table.item(6, 2).text() == f"{top[0]['name']} ({top[0]['score']:.4f})"
    view.weight.setValue(0.85)
    iou.resize(1000, 760)
    _shot(iou, artifacts_dir, "iou_experiments_bench")


@pytest.mark.parametrize("case", ["not_json", "not_results", "cv_without_cells", "bench_bad_figure",
                                  "empty_folder"])
def test_iou_refuses_results_it_cannot_show_with_one_dialog(iou, qtbot, tmp_path, case):
    path = tmp_path / "cv.json"
    content = {
        "not_json": "{broken",
        "not_results": json.dumps({"hello": 1}),
        "cv_without_cells": json.dumps({"kind": "cross-validation", "folds": [["a"], ["b"]],
                                        "seeds": [1], "scans": []}),
        "bench_bad_figure": json.dumps({"kind": "benchmark", "rows": [
            {"name": "A", "miou": 0.9, "iou": {}, "batch": 8, "gpu_util": None, "flops": "many",
             "params": 10, "vram": None, "fit_time": 1.0}]}),
    }.get(case)
    if content is None:
        path = tmp_path
    else:
        path.write_text(content)
    tab = iou.experiments
    assert not tab.open_results(path)
    qtbot.waitUntil(lambda: len(_dialogs()) == 1, timeout=5000)
    assert _dialogs()[0].text() == tab.last_error and "Traceback" not in tab.last_error
    assert str(path) in tab.last_error
    expected = {"not_json": "not valid JSON", "not_results": "no cross-validation or benchmark",
                "cv_without_cells": "not a cross-validation bone cv wrote",
                "bench_bad_figure": "not a benchmark bone bench wrote",
                "empty_folder": "holds neither cv.json nor bench.json"}[case]
    assert expected in tab.last_error
    assert tab.pages.currentWidget() is tab.empty and tab.results is None


def test_dlfit_experiment_refusals_show_one_dialog(dlfit, qtbot, four_scans, tmp_path):
    dialog = _tiny(qtbot, dlfit, four_scans)
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)  # no folder yet
    assert "experiment folder" in dialog.last_error and len(_dialogs()) == 1
    _dialogs()[0].close()
    dialog.folder.set_path(tmp_path / "cv")
    dialog.form.folds.setValue(9)
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_running() and dialog.last_error != "", timeout=30000)
    assert "“Folds” 9 is more than the 4 scans" in dialog.last_error
    assert len(_dialogs()) == 1 and _dialogs()[0].text() == dialog.last_error
    assert not (tmp_path / "cv").exists()  # refused before anything was written
    _dialogs()[0].close()

    # Closing the DLFit window during a fit stops the experiment there, resumable.
    dialog.form.folds.setValue(2)

    def close_in_first_epoch(record: object) -> None:
        if isinstance(getattr(record, "event", None), StepProgress) and dlfit.isVisible():
            dlfit.close()

    dialog.shown.connect(close_in_first_epoch)
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=60000)
    assert not dlfit.isVisible() and dialog.result.status == "stopped"
    assert fit_action(tmp_path / "cv" / "fold1_seed42") in ("resume", "refit")


def test_results_tables_match_the_markdown_and_the_file_reads_back(tmp_path):
    """Qt-free: the cells the windows show are cv.md's, and read_experiment finds the file."""
    from bone_apps.core.evaluate.summary import summarize

    rows = [{"fold": f, "seed": s, "scan": f"s{f}{i}", "miou": 0.9 - 0.01 * f + 0.001 * i + 0.002 * s,
             "mdice": 0.95, "iou": {}, "dice": {}, "prediction": "p"}
            for f in (1, 2) for s in (1, 2) for i in range(2)]
    stats = summarize(rows, 2, (1, 2))
    head, cells = table6_rows(stats, (1, 2))
    markdown = table6_markdown(stats, (1, 2), [2, 2])
    assert head == ["Test fold", "mIoU (seed 1)", "mIoU (seed 2)", "Mean ± SD across seeds"]
    assert f"| 1 | {' | '.join(cells[0][1:])} |" in markdown
    assert f"**{cells[-1][-1]}**" in markdown
    (tmp_path / "cv.json").write_text(json.dumps({"kind": "cross-validation", "complete": False,
                                                  "folds": [["s10", "s11"], ["s20", "s21"]],
                                                  "seeds": [1, 2], "scans": rows, **stats}))
    found = read_experiment(tmp_path)
    assert found.kind == "cross-validation" and found.path == tmp_path / "cv.json" and not found.complete
