"""What both plugin widgets share: a form that runs one core job generator off napari's GUI thread.

The job runs in napari's thread worker (superqt), as napari's own long tasks do. Its progress
records reach `on_record` and its result `on_result` on the GUI thread; a problem the user can
fix (BoneAppsError) is shown as its one sentence, anything else through napari's error
notifications with the traceback. Stop asks the job to end at its next safe point.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton, Widget

from bone_apps.core.errors import BoneAppsError, Cancelled

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

# A job: a generator function called as func(*args, stop=threading.Event, **kwargs).
Job = tuple[Callable[..., Generator], tuple, dict]


class JobWidget(Container):
    """Fields, a start button and Stop, a progress bar and a status line, over one job.

    Subclasses give the fields and implement `job` (read the fields, return the job or raise
    BoneAppsError naming what is missing), `on_record` and `on_result`.

    Attributes:
        worker: the running or last worker (napari's GeneratorWorker), or None.
        status: the status line's text widget.
    """

    def __init__(self, viewer: napari.viewer.Viewer, fields: Sequence[Widget], start_text: str) -> None:
        self.viewer = viewer
        self.start_button = PushButton(text=start_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(min=0, max=1, value=0, label="Progress")
        self.status = Label(value="")
        buttons = Container(widgets=[self.start_button, self.stop_button], layout="horizontal",
                            labels=False)
        super().__init__(widgets=[*fields, buttons, self.progress, self.status])
        self.status.native.setWordWrap(True)
        self.worker = None
        self._busy = False
        self._closed = False
        self._stop = threading.Event()
        self._listening: list[tuple[Any, Callable]] = []
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        # Layer choices follow the viewer's layers.
        self.listen(viewer.layers.events.inserted, self.reset_choices)
        self.listen(viewer.layers.events.removed, self.reset_choices)
        self.native.destroyed.connect(self._on_destroyed)

    def listen(self, emitter: Any, callback: Callable) -> None:
        """Connect a viewer event to `callback` until the widget is closed."""
        emitter.connect(callback)
        self._listening.append((emitter, callback))

    # -- what a subclass provides ---------------------------------------------------------------
    def job(self) -> Job:
        raise NotImplementedError

    def on_record(self, record: Any) -> None:
        """A progress record of the job (GUI thread)."""

    def on_result(self, result: Any) -> None:
        """The job's return value (GUI thread)."""

    # -- running ------------------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether a job is running (until its worker has finished)."""
        return self._busy

    def start(self) -> None:
        """Start the job the fields describe, unless one runs; a missing input is said in the status."""
        from napari.qt.threading import create_worker

        if self.running():
            return
        try:
            func, args, kwargs = self.job()
        except BoneAppsError as exc:
            self.say(exc.shown(as_label=True))
            return
        self._stop = threading.Event()
        worker = create_worker(func, *args, stop=self._stop, **kwargs, _ignore_errors=True)
        worker.yielded.connect(self._while_open(self.on_record))
        worker.returned.connect(self._while_open(self.on_result))
        worker.errored.connect(self._while_open(self._on_error))
        worker.aborted.connect(self._while_open(lambda: self.say("Stopped.")))
        worker.finished.connect(self._while_open(self._on_finished))
        self.worker = worker
        self._busy = True
        self.start_button.enabled = False
        self.stop_button.enabled = True
        self.progress.value = 0
        self.say("Starting…")
        worker.start()

    def stop(self) -> None:
        """Ask the running job to end at its next safe point."""
        self._stop.set()

    def _on_destroyed(self, *_: Any) -> None:
        """The widget was closed (its dock removed): stop the job and show nothing more."""
        self._closed = True
        self._stop.set()
        for emitter, callback in self._listening:
            emitter.disconnect(callback)
        self._listening.clear()

    def _while_open(self, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback`, skipped once the widget is closed (its Qt widgets are gone by then)."""

        def call(*args: Any) -> None:
            if not self._closed:
                callback(*args)

        return call

    def say(self, text: str) -> None:
        self.status.value = text

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import notification_manager, show_error

        if isinstance(exc, Cancelled):
            self.say("Stopped.")
        elif isinstance(exc, BoneAppsError):
            self.say(exc.shown(as_label=True))
            show_error(exc.shown(as_label=True))
        else:
            self.say(f"{type(exc).__name__}: {exc}")
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)

    def _on_finished(self) -> None:
        self._busy = False
        self.start_button.enabled = True
        self.stop_button.enabled = False


def layers_of(viewer: napari.viewer.Viewer, kind: type) -> list[tuple[str, Layer]]:
    """(name, layer) of each layer of `kind` in the viewer, top layer first (a ComboBox's choices)."""
    return [(layer.name, layer) for layer in reversed(viewer.layers) if isinstance(layer, kind)]


def level0(layer: Layer) -> Any:
    """A layer's full-resolution data (the first level of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data
