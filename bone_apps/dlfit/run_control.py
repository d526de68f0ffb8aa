"""Start, Stop and Resume in DLFit: the checks before a fit, the question about an earlier run
in the output folder, resuming it with FitConfig's rule, and what the buttons allow meanwhile.

`RunControl` is a mixin of DLFitWindow: it uses the window's pairs, output folder, options,
runner, monitor and status bar.
"""

from __future__ import annotations

from pathlib import Path

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.fit import runfiles
from bone_apps.core.fit.config import FitConfig, resume_request, resumed_config
from bone_apps.core.fit.records import FitMessage
from bone_apps.dlfit.dialogs import ask_about_earlier_run
from bone_apps.dlfit.handover import finished_model
from bone_apps.dlfit.runner import read_history, run_status
from bone_apps.dlfit.tips import EASY_RECIPE, easy_recipe_text


class RunControl:
    """Start / Stop / Resume of DLFitWindow and the state of its buttons."""

    def start(self) -> None:
        """Check what can be checked here, then fit off the GUI thread."""
        if self.runner.is_running():
            return
        try:
            config = self.config()
            if not config.out:
                raise BoneAppsError("Choose an output folder for the model and its logs first.")
            if len(config.pairs) < 2:
                raise BoneAppsError("Add at least two scan/mask pairs: one or more to fit and at "
                                    "least one to validate.")
            config.validate()
        except BoneAppsError as exc:
            self._error(exc)
            return
        problems = self.pairs.problems()
        if problems:
            self._error("Some pairs cannot be used; fix or remove them:\n" + "\n".join(problems))
            return
        self._remember(config)
        status = run_status(Path(config.out))
        if status:
            self._ask_about_earlier_run(config, status)
        else:
            self._launch(config)

    def _ask_about_earlier_run(self, config: FitConfig, status: str) -> None:
        self.question = ask_about_earlier_run(
            self, config.out, status == "resumable",
            on_replace=lambda: self._launch(config, overwrite=True), on_resume=self.resume)
        self.question.finished.connect(self._forget_question)

    def _forget_question(self) -> None:
        self.question = None

    def resume(self) -> None:
        """Continue the run in the output folder (resume_config's options; refusals: a dialog)."""
        if self.runner.is_running():
            return
        out = self.out.path()
        status = run_status(out) if out is not None else ""
        if status not in ("resumable", "completed"):
            self._error("The output folder holds no stopped run to resume: choose the folder of "
                        "a stopped run, or press Start for a new one.")
            return
        try:
            config = self.resume_config(out)
        except BoneAppsError as exc:
            self._error(exc)
            return
        if status == "completed" and config.epochs <= len(read_history(out)):
            self._error("The run in the output folder is finished: raise Epochs to fit it "
                        "further, or press Start for a new run.")
            return
        self._launch(config, resume=True)

    def resume_config(self, out: Path) -> FitConfig:
        """The run in `out` with Advanced mode's options (Easy mode: the epochs), checked by
        FitConfig's rule (core.fit.config.resumed_config: the fields of RESUMABLE_CHANGES may
        change, the epochs may grow). Raises BoneAppsError naming an option that may not change."""
        saved = FitConfig.load(out / runfiles.CONFIG)
        changes = dict(self.advanced.values()) if self.is_advanced() else {}
        changes["epochs"] = self.easy_epochs.value()  # both modes' epochs stay in step
        if changes.get("augmentation") is not None:
            changes["augmentation"] = changes["augmentation"].to_dict()
        requested = resume_request(saved, changes, str(out))
        return resumed_config(saved, requested, len(read_history(out)), str(out))

    def _launch(self, config: FitConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.last_error = ""
        self._run_use = (config.patch, config.batch, []) if config.easy else None
        self.recipe.setText(easy_recipe_text(self._run_use))
        self.runner.start(config, resume=resume, overwrite=overwrite)
        self.statusBar().showMessage(("Resuming" if resume else "Fitting") + f" into {config.out}…")
        self._update_buttons()

    def stop(self) -> None:
        if self.runner.is_running():
            self.runner.stop()
            self.statusBar().showMessage("Stopping at the next safe point…")

    def _on_progress(self, event: object) -> None:
        """Easy mode's notes say how the recipe adapts to the data: show what the run uses."""
        if (self._run_use is not None and isinstance(event, FitMessage) and event.level == "note"
                and event.text.startswith("Easy mode:")):
            self._run_use[2].append(event.text)
            self.recipe.setText(easy_recipe_text(self._run_use))

    def _on_fit_finished(self, result) -> None:
        if result is not None:
            self.statusBar().showMessage("Stopped: press Resume to continue." if
                                         result.status == "stopped" else "Fitting finished.")
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.runner.is_running()
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        out = self.out.path()
        status = run_status(out) if out is not None else ""
        self.resume_button.setEnabled(not running and (status == "resumable" or (
            status == "completed" and self.easy_epochs.value() > len(read_history(out)))))
        self.predict_button.setEnabled(not running and finished_model(out) is not None)
        for widget in (self.pairs, self.advanced, self.out, self.easy_radio, self.advanced_radio,
                       self.easy_epochs):
            widget.setEnabled(not running)

    def _on_out_changed(self) -> None:
        """Reopening the folder of a run shows its curves; a stopped one can be resumed."""
        out = self.out.path()
        status = run_status(out) if out is not None else ""
        if status in ("resumable", "completed") and not self.runner.is_running():
            history = read_history(out)
            try:
                saved = FitConfig.load(out / runfiles.CONFIG)
                self.advanced.set_config(saved)  # Resume continues with the run's options
                self.easy_epochs.setValue(saved.epochs)
            except BoneAppsError:
                saved = None
            self.monitor.set_history(history, saved.epochs if saved else None)
            self.statusBar().showMessage(
                f"This folder holds a stopped run ({len(history)} epochs done): press Resume to "
                "continue it, or choose another folder for a new run." if status == "resumable"
                else "This folder holds a finished run: raise Epochs and press Resume to fit it "
                "further, or choose another folder for a new run.")
        elif not self.runner.is_running():  # a new folder: the previous run is not its run
            self.monitor.clear()
            self._run_use = None
            self.recipe.setText(EASY_RECIPE)
            self.statusBar().clearMessage()
        self._update_buttons()

