"""The DLFit window: scan/mask pairs, Easy or Advanced options, Start / Stop / Resume, live curves."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QButtonGroup,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from bone_apps.core.data.pairs import pairs_from_paths
from bone_apps.core.errors import BoneAppsError
from bone_apps.core.fit.config import FitConfig, easy_config
from bone_apps.dlfit.curves import FitMonitor
from bone_apps.dlfit.dialogs import choose_config_file
from bone_apps.dlfit.handover import finished_model, open_dlpred
from bone_apps.dlfit.options import AdvancedOptions
from bone_apps.dlfit.pair_view import PairView
from bone_apps.dlfit.pairs import VALIDATION, PairsPanel
from bone_apps.dlfit.run_control import RunControl
from bone_apps.dlfit.runner import FitRunner
from bone_apps.dlfit.sample import use_sample
from bone_apps.dlfit.tips import EASY_RECIPE, TIPS, plain_options
from bone_apps.ui.branding import app_icon
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.pickers import OUTPUT_TITLE, PathPicker
from bone_apps.ui.sample_data import SampleData
from bone_apps.ui.settings import AppSettings
from bone_apps.ui.widgets import scroll_column

ATTENTION = "Something needs your attention: see the message."


class DLFitWindow(RunControl, QMainWindow):
    """Fit a segmentation model on scan/mask pairs, in Easy or Advanced mode."""

    def __init__(self, settings: AppSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("bone_apps DLFit — fit a segmentation model")
        self.setWindowIcon(app_icon("dlfit"))
        self.settings = settings or AppSettings("dlfit")
        self.last_error = ""
        self.question: QMessageBox | None = None
        self.dlpred_window: QMainWindow | None = None  # opened by "Predict with this model…"
        self.experiments = None  # evaluate.ExperimentDialog, made when first opened
        self._run_use: tuple[int, int, list[str]] | None = None  # Easy run: patch, batch, notes
        self.sample = SampleData(self, lambda root: use_sample(self, root), self._error)
        self._build()
        self._restore()

    # -- layout ---------------------------------------------------------------------------------
    def _build(self) -> None:
        self.easy_radio = QRadioButton("&Easy")
        self.easy_radio.setToolTip("Pairs, output folder, epochs: the paper's tested recipe does "
                                   "the rest.")
        self.advanced_radio = QRadioButton("Ad&vanced")
        self.advanced_radio.setToolTip("Every option of the fitting engine, grouped as the paper "
                                       "lists them.")
        modes = QButtonGroup(self)
        modes.addButton(self.easy_radio)
        modes.addButton(self.advanced_radio)
        self.easy_radio.setChecked(True)
        self.easy_radio.toggled.connect(lambda easy: self.set_mode(advanced=not easy))
        mode_row = QHBoxLayout()
        mode_row.addWidget(QLabel("Mode:"))
        mode_row.addWidget(self.easy_radio)
        mode_row.addWidget(self.advanced_radio)
        mode_row.addStretch(1)
        self.recipe = QLabel(EASY_RECIPE)
        self.recipe.setWordWrap(True)
        self.recipe.setToolTip(EASY_RECIPE)

        self.pairs = PairsPanel(self.settings)
        self.pairs.error.connect(self._error)
        self.pairs.changed.connect(self._update_buttons)
        pairs_box = QGroupBox("Scan and mask &pairs")
        QVBoxLayout(pairs_box).addWidget(self.pairs)

        self.out = PathPicker("Output folder for the model, checkpoint and logs", self.settings,
                              "out", TIPS["out"], folder_title=OUTPUT_TITLE)
        self.out.file_button.hide()
        self.out.changed.connect(self._on_out_changed)
        self.easy_epochs = QSpinBox()
        self.easy_epochs.setRange(1, 10000)
        self.easy_epochs.setValue(25)
        self.easy_epochs.setToolTip(TIPS["epochs"])
        output = QFormLayout()
        output.addRow("&Output folder:", self.out)
        output.addRow("Epoc&hs:", self.easy_epochs)
        self.epochs_label = output.labelForField(self.easy_epochs)

        self.advanced = AdvancedOptions(self.settings)
        self.advanced.error.connect(self._error)
        self.easy_epochs.valueChanged.connect(self.advanced.w["epochs"].setValue)
        self.advanced.w["epochs"].valueChanged.connect(self.easy_epochs.setValue)
        self.advanced.w["class_names"].editingFinished.connect(self._class_names_changed)
        self.scroll = scroll_column(self.advanced)

        self.start_button, self.stop_button, self.resume_button, self.predict_button = (
            self._button(text, tip, slot) for text, tip, slot in (
                ("&Start", "Check the pairs and fit a model off to the side; the window stays "
                 "usable. (F5)", self.start),
                ("S&top", "End at the next safe point and keep a checkpoint to resume from. "
                 "(Shift+F5)", self.stop),
                ("Res&ume", "Continue the run in the output folder with the options it started "
                 "with; more Epochs fit it further. (F6)", self.resume),
                ("Predict &with this model…", "Open DLPred with this run's model chosen, to "
                 "segment a scan with it.", self.open_dlpred)))
        run_row = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            run_row.addWidget(button)
        run_row.addStretch(1)
        run_row.addWidget(self.predict_button)

        setup = QWidget()
        left = QVBoxLayout(setup)
        left.addWidget(self.sample.bar)
        left.addLayout(mode_row)
        left.addWidget(self.recipe)
        left.addWidget(pairs_box, 2)
        left.addLayout(output)
        left.addWidget(self.scroll, 3)
        left.addLayout(run_row)

        self.monitor = FitMonitor()
        self.runner = FitRunner(self.monitor, self)
        self.runner.error.connect(self._error)
        self.runner.finished.connect(self._on_fit_finished)
        self.runner.progress.connect(self._on_progress)
        self.easy_epochs.valueChanged.connect(self._update_buttons)  # more epochs: Resume
        self.pair_view = PairView(self.pairs)
        self.pair_view.shown.connect(self._on_pair_shown)
        self.side_tabs = QTabWidget()
        self.side_tabs.addTab(self.monitor, "Progress and curves")
        self.side_tabs.addTab(self.pair_view, "Selected pair")
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(setup)
        self.splitter.addWidget(self.side_tabs)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.setCentralWidget(self.splitter)
        self._build_menu()
        self.resize(1280, 800)
        self.set_mode(advanced=False)

    def _button(self, text: str, tip: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        for text, key, slot in (
                ("&Load configuration…", QKeySequence.StandardKey.Open, self._load_dialog),
                ("&Save configuration…", QKeySequence.StandardKey.Save, self._save_dialog),
                ("&Quit", QKeySequence.StandardKey.Quit, self.close)):
            action = QAction(text, self)
            action.setShortcut(key)
            action.triggered.connect(slot)
            file_menu.addAction(action)
        file_menu.insertAction(file_menu.actions()[-1], self.sample.action)
        run_menu = self.menuBar().addMenu("F&it")
        for text, key, slot in (("&Start", "F5", self.start), ("S&top", "Shift+F5", self.stop),
                                ("Res&ume", "F6", self.resume)):
            action = QAction(text, self)
            action.setShortcut(QKeySequence(key))
            action.triggered.connect(slot)
            run_menu.addAction(action)
        self.experiments_action = run_menu.addAction("Cross-validate or &benchmark…", self.open_experiments)

    def set_mode(self, advanced: bool) -> None:
        """Easy: pairs, output folder, epochs. Advanced: every option."""
        if self.advanced_radio.isChecked() != advanced:
            (self.advanced_radio if advanced else self.easy_radio).setChecked(True)
        self.recipe.setVisible(not advanced)
        self.easy_epochs.setVisible(not advanced)
        self.epochs_label.setVisible(not advanced)
        self.scroll.setVisible(advanced)
        self.pairs.set_validation_visible(advanced)
        self.experiments_action.setEnabled(advanced)
        self.settings.set("mode", "advanced" if advanced else "easy")

    def is_advanced(self) -> bool:
        return self.advanced_radio.isChecked()

    # -- configuration --------------------------------------------------------------------------
    def config(self) -> FitConfig:
        """The FitConfig the widgets describe (Easy: the paper's recipe with these pairs).

        Raises:
            BoneAppsError: an option is invalid (e.g. augmentation chances adding up past 1).
        """
        out = self.out.path()
        rows = self.pairs.rows()
        pairs = tuple((scan, mask) for scan, mask, _ in rows)
        if not self.is_advanced():
            return easy_config(str(out or ""), pairs=pairs, epochs=self.easy_epochs.value())
        ids = [p.id for p in pairs_from_paths(pairs)]
        val = tuple(i for i, (_, _, ticked) in zip(ids, rows) if ticked)
        return FitConfig(out=str(out or ""), pairs=pairs, val_scans=val, **self.advanced.values())

    def set_config(self, config: FitConfig) -> None:
        """Show a configuration: mode, pairs (a dataset root is expanded), options, folder."""
        self.set_mode(advanced=not config.easy)
        self.pairs.clear()
        if config.data:
            self.pairs.add_dataset_root(config.data)
        for scan, mask in config.pairs:
            self.pairs.add_pair(scan, mask)
        if config.val_scans:
            ids = [p.id for p in pairs_from_paths([(s, m) for s, m, _ in self.pairs.rows()])]
            for row, ident in enumerate(ids):
                if ident in config.val_scans:
                    self.pairs.table.item(row, VALIDATION).setCheckState(Qt.CheckState.Checked)
        self.advanced.set_config(config)
        self._class_names_changed()
        self.easy_epochs.setValue(config.epochs)
        if config.out:
            self.out.edit.setText(config.out)

    def save_config(self, path: Path) -> Path:
        """Write the configuration as JSON (the file `bone fit --config` reads)."""
        return self.config().save(Path(path))

    def load_config(self, path: Path) -> None:
        try:
            self.set_config(FitConfig.load(Path(path)))
        except BoneAppsError as exc:
            self._error(exc)
            return
        self.statusBar().showMessage(f"Loaded {path}")

    def open_dlpred(self) -> QMainWindow | None:
        """Open DLPred with the finished run's model (None when the folder holds none)."""
        model = finished_model(self.out.path())
        if model is not None:
            self.dlpred_window = open_dlpred(model, self.dlpred_window)
            return self.dlpred_window
        return None

    def open_experiments(self) -> None:
        """Cross-validate or benchmark the current options (Advanced mode; dlfit/evaluate.py)."""
        from bone_apps.dlfit.evaluate import open_experiments

        self.experiments = open_experiments(self, self.experiments)

    def _on_pair_shown(self) -> None:
        if not self.runner.is_running():  # a running fit keeps its curves in front
            self.side_tabs.setCurrentWidget(self.pair_view)

    def _class_names_changed(self) -> None:
        names = self.advanced.values()["class_names"]
        self.pairs.set_class_count(len(names) or None)

    # -- settings, errors, closing --------------------------------------------------------------
    def _remember(self, config: FitConfig) -> None:
        self.out.remember()
        self.settings.set("config", config.to_json())

    def _restore(self) -> None:
        text = self.settings.get("config")
        if text:
            try:
                self.set_config(FitConfig.from_json(text))
            except (BoneAppsError, ValueError, TypeError):
                pass  # an unreadable remembered state only costs the defaults
        self.set_mode(advanced=self.settings.get("mode") == "advanced")
        geometry = self.settings.get("geometry")
        if geometry:
            self.restoreGeometry(QByteArray.fromBase64(geometry.encode()))
        self._update_buttons()

    def _error(self, message: str | BaseException) -> None:
        message = plain_options(message)
        self.last_error = message
        self.statusBar().showMessage(ATTENTION)
        show_error(self, "DLFit", message).finished.connect(self._error_closed)

    def _error_closed(self) -> None:
        if self.statusBar().currentMessage() == ATTENTION:
            self.statusBar().clearMessage()

    def _save_dialog(self) -> None:
        file = choose_config_file(self, True, self.out.path() or Path.home())
        if file is not None:
            try:
                self.save_config(file)
                self.statusBar().showMessage(f"Saved {file}")
            except BoneAppsError as exc:
                self._error(exc)
            except OSError as exc:
                self._error(f"{file} could not be written ({exc.strerror}): choose another place.")

    def _load_dialog(self) -> None:
        file = choose_config_file(self, False, Path(self.settings.get("last_folder", str(Path.home()))))
        if file is not None:
            self.load_config(file)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        try:
            self.settings.set("config", self.config().to_json())
        except BoneAppsError:
            pass
        self.settings.set("geometry", bytes(self.saveGeometry().toBase64()).decode())
        self.runner.stop()
        self.runner.wait()
        self.sample.join()
        self.pairs.stop_checks()
        self.pair_view.close_pair()
        super().closeEvent(event)
