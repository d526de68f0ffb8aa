"""Where DLPred's preview finds labels: slices as a run writes them, then the finished stack."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from bone_apps.core.errors import VolumeError
from bone_apps.core.io.volume import Volume, open_volume

# The preview keeps at most this many bytes of freshly written slices (the newest ones): a
# scan of any length costs the same memory; older slices show once the output is complete.
LIVE_BYTES = 256 * 2**20


class LiveLabels:
    """A label source for `SliceView`: `labels(z)` -> (Y, X) array or None.

    During a run, `add(z, labels)` keeps the newest slices within `max_bytes`. After the run,
    `open_output(path)` reads any slice from the finished stack on disk instead.
    """

    def __init__(self, max_bytes: int = LIVE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._slices: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.output: Volume | None = None
        self.written = 0  # slices reported written in this run

    def reset(self) -> None:
        """Forget everything (a new run starts)."""
        self._slices.clear()
        self._bytes = 0
        self.written = 0
        if self.output is not None:
            self.output.close()
        self.output = None

    def add(self, z: int, labels: np.ndarray) -> None:
        """Keep slice z's labels, dropping the oldest kept slices beyond `max_bytes`."""
        if z in self._slices:
            self._bytes -= self._slices.pop(z).nbytes
        self._slices[z] = labels
        self._bytes += labels.nbytes
        while self._bytes > self.max_bytes and len(self._slices) > 1:
            _, old = self._slices.popitem(last=False)
            self._bytes -= old.nbytes

    def open_output(self, path: Path) -> None:
        """Read labels from the finished stack at `path` from now on."""
        self.output = open_volume(path, role="mask")
        self._slices.clear()
        self._bytes = 0

    def __contains__(self, z: int) -> bool:
        return z in self._slices

    def __call__(self, z: int) -> np.ndarray | None:
        if z in self._slices:
            return self._slices[z]
        if self.output is not None and 0 <= z < self.output.shape[0]:
            try:
                return self.output.read_slice(z)
            except VolumeError:
                return None  # the stack was moved or deleted since: show the scan alone
        return None
