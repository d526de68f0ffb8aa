"""Export of the IoU window's scores: copy the table, save CSV or JSON naming the scored pair.

`ScoresExport` is a mixin of IoUWindow: it uses the window's result, scored pair and fields.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFileDialog

from bone_apps.core.errors import BoneAppsError
from bone_apps.core.io.outputs import write_atomic
from bone_apps.core.score.scoring import result_csv, write_result_json
from bone_apps.ui.dialogs import show_error
from bone_apps.ui.pickers import save_folder


class ScoresExport:
    """Copy and save the scores on show, only while the fields still name their pair."""

    def copy_table(self) -> None:
        """Copy the table on show as CSV (only while it belongs to the fields' pair)."""
        if self.result is not None and self.copy_button.isEnabled():
            QGuiApplication.clipboard().setText(result_csv(self.result))
            self.statusBar().showMessage("Table copied as CSV.")

    def save(self, path: Path) -> Path:
        """Save the results as CSV or JSON, by the file's suffix, atomically.

        The files name the pair that was scored, never the fields' current text. The save
        dialog has asked before replacing a file; a JSON file is still replaced only when
        bone_apps wrote it (ForeignFilesError otherwise).

        Raises:
            ValueError: there is no result, or the fields no longer name the scored pair.
        """
        if self.result is None or self.scored is None:
            raise ValueError("nothing to save yet")
        if self._inputs_key() != self.scored:
            raise ValueError("the fields changed since the scores were computed")
        path = Path(path)
        if path.suffix.lower() == ".json":
            write_result_json(self.result, path, self.scored[0], self.scored[1], overwrite=True)
        else:
            write_atomic(path, result_csv(self.result))
        self.statusBar().showMessage(f"Saved {path}")
        return path

    def _save_dialog(self, kind: str) -> None:
        if self.scored is None:
            return
        folder = save_folder(self.scored[1], self.settings.get("save_folder"))
        start = str(folder / f"iou.{kind}")
        file, _ = QFileDialog.getSaveFileName(self, "Save scores", start,
                                              f"{kind.upper()} (*.{kind})")
        if file:
            self.settings.set("save_folder", str(Path(file).parent))
            try:
                self.save(Path(file))
            except BoneAppsError as exc:  # a foreign JSON file, a full disk, a read-only folder
                self.last_error = str(exc)
                self.statusBar().showMessage("Not saved: see the message.")
                show_error(self, "IoU", str(exc))

