"""What DLFit's experiment dialog runs: a cross-validation (folds, seeds, order seed) or a
benchmark grid (test scans; architectures x encoders x patch sizes), as two tabs. It turns
its fields into core.evaluate's CVConfig or BenchConfig around the window's fit options."""

from __future__ import annotations

import re
from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QTabWidget,
    QWidget,
)

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.evaluate.bench import BenchConfig, grid
from bone_apps.core.evaluate.cv import CVConfig
from bone_apps.core.evaluate.folds import DEFAULT_ORDER_SEED
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.model.models import SMP_ENCODERS
from bone_apps.dlfit.choices import architecture_choices, encoder_choices

CV_TAB, GRID_TAB = 0, 1


def numbers(text: str, field: str, example: str) -> list[int]:
    """Whole numbers separated by spaces or commas.

    Raises:
        BoneAppsError: a part is not a whole number (naming `field` and an `example`).
    """
    try:
        return [int(t) for t in re.split(r"[,\s]+", text.strip()) if t]
    except ValueError:
        raise BoneAppsError(f"“{field}” must be whole numbers separated by spaces, e.g. {example}.") from None


def names(text: str) -> list[str]:
    """Names separated by spaces or commas."""
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def checked(widget: QListWidget) -> list[str]:
    """The ticked entries of a list, in order."""
    return [widget.item(i).text() for i in range(widget.count())
            if widget.item(i).checkState() == Qt.CheckState.Checked]


def fill_checks(widget: QListWidget, entries: Sequence[str], ticked: Sequence[str]) -> None:
    """A list of entries to tick, those in `ticked` ticked."""
    widget.blockSignals(True)
    widget.clear()
    for name in entries:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if name in ticked else Qt.CheckState.Unchecked)
        widget.addItem(item)
    widget.blockSignals(False)


class ExperimentForm(QTabWidget):
    """Two tabs: "Cross-validation" and "Benchmark grid"; the current one is what runs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folds = QSpinBox()
        self.folds.setRange(2, 1000)
        self.folds.setValue(5)
        self.folds.setToolTip("Test folds K: the scans, in a fixed order, are cut into K folds of "
                              "whole scans; each is tested once by models fitted on the others.")
        self.seeds = QLineEdit("42")
        self.seeds.setToolTip("Fit seeds, one replicate of every fold each (the paper: 42 1701 1864); "
                              "each seed also splits the fold's pool into training and validation.")
        self.order_seed = QSpinBox()
        self.order_seed.setRange(0, 2**31 - 1)
        self.order_seed.setValue(DEFAULT_ORDER_SEED)
        self.order_seed.setToolTip("The scans, sorted by name, are shuffled once with this seed to "
                                   "fix their order (the paper's Table 3).")
        cv_page = QWidget()
        cv_form = QFormLayout(cv_page)
        cv_form.addRow("F&olds:", self.folds)
        cv_form.addRow("S&eeds:", self.seeds)
        cv_form.addRow("Order see&d:", self.order_seed)

        self.test_scans = QListWidget()
        self.test_scans.setToolTip("Scans every configuration is scored on; they are never fitted.")
        self.archs = QListWidget()
        self.archs.setToolTip("Architectures of the grid (those of the fitting mode chosen in DLFit).")
        self.encoders = QLineEdit()
        self.encoders.setToolTip("Encoders of the grid, separated by commas (e.g. resnet18, "
                                 "efficientnet-b3); the Encoder list of Advanced mode names them all.")
        self.patches = QLineEdit()
        self.patches.setToolTip("Patch sizes of the grid in pixels, separated by commas (e.g. 256, 512).")
        self.grid_label = QLabel()
        for signal in (self.archs.itemChanged, self.encoders.textChanged, self.patches.textChanged):
            signal.connect(self._update_grid_label)
        grid_page = QWidget()
        grid_form = QFormLayout(grid_page)
        grid_form.addRow("&Test scans:", self.test_scans)
        grid_form.addRow("&Architectures:", self.archs)
        grid_form.addRow("E&ncoders:", self.encoders)
        grid_form.addRow("&Patch sizes:", self.patches)
        grid_form.addRow("", self.grid_label)
        self.addTab(cv_page, "&Cross-validation")
        self.addTab(grid_page, "&Benchmark grid")

    def refresh(self, scan_ids: Sequence[str], options: dict) -> None:
        """The scans of the pairs table and the architectures of the fitting mode (`options`:
        Advanced mode's values), keeping what is ticked; the grid starts from the current
        architecture, encoder and patch size."""
        fill_checks(self.test_scans, scan_ids, checked(self.test_scans))
        ticked = checked(self.archs) if self.archs.count() else [options["arch"]]
        fill_checks(self.archs, architecture_choices(options["dims"]), ticked)
        if not self.encoders.text().strip():
            self.encoders.setText(options["encoder"])
        if not self.patches.text().strip():
            self.patches.setText(str(options["patch"]))
        self._update_grid_label()

    def _update_grid_label(self) -> None:
        n = [len(checked(self.archs)), len(names(self.encoders.text())), len(names(self.patches.text()))]
        self.grid_label.setText(f"{n[0]} architecture(s) × {n[1]} encoder(s) × {n[2]} patch size(s) "
                                f"= {n[0] * n[1] * n[2]} configuration(s)")

    def config(self, template: FitConfig, folder: str) -> CVConfig | BenchConfig:
        """The experiment of the current tab, every fit with `template`'s options, into `folder`.

        Raises:
            BoneAppsError: seeds or patch sizes that are not numbers, an empty grid, or an
                architecture that cannot be built with an encoder of the grid.
        """
        if self.currentIndex() == CV_TAB:
            return CVConfig(template, folder, self.folds.value(),
                            tuple(numbers(self.seeds.text(), "Seeds", "42 1701 1864")),
                            order_seed=self.order_seed.value())
        archs, encoders = checked(self.archs), names(self.encoders.text())
        patches = numbers(self.patches.text(), "Patch sizes", "256, 512")
        if not (archs and encoders and patches):
            raise BoneAppsError("Tick at least one architecture and give at least one encoder and "
                                "one patch size for the grid.")
        for arch in archs:
            allowed = encoder_choices(arch, template.dims)
            wrong = [e for e in encoders if e in SMP_ENCODERS and e not in allowed]
            if wrong:
                raise BoneAppsError(f"{arch} cannot be built with encoder {wrong[0]}: untick {arch} "
                                    "or choose another encoder.")
        return BenchConfig(template, folder, tuple(checked(self.test_scans)),
                           tuple(grid(archs, encoders, patches)))
