"""A background thread that samples RAM and GPU use twice a second.

RAM is the resident set of this process plus its children (DataLoader workers, statistics
processes), read with psutil. GPU utilization and used memory come from NVML (pynvml), which
sees every process on the device and needs no torch import.
"""

from __future__ import annotations

import os
import threading

import psutil

_INTERVAL_S = 0.5


def _nvml():
    """The pynvml module, initialised, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, driver errors
        return None


def gpu_count() -> int:
    """Number of NVIDIA GPUs NVML reports (0 without a driver), without importing torch."""
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def cuda_available_cheaply() -> bool:
    """True when NVML reports at least one NVIDIA GPU (no torch import)."""
    return gpu_count() > 0


def tree_rss_bytes(process: psutil.Process | None = None) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    process = process or psutil.Process(os.getpid())
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a worker that just ended
    return total


class ResourceMonitor:
    """Sample peak RAM (this process tree) and GPU use while the `with` block runs.

    Args:
        interval: seconds between samples.
        gpu_indices: NVML device indices to watch (default: all).

    Properties give the peaks so far; `snapshot()` returns them as a plain dict.
    """

    def __init__(self, interval: float = _INTERVAL_S, gpu_indices: list[int] | None = None) -> None:
        self.interval = interval
        self._gpu_indices = gpu_indices
        self._process = psutil.Process(os.getpid())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_rss = 0
        self._peak_vram: dict[int, int] = {}
        self._util_sum: dict[int, float] = {}
        self._util_n = 0
        self._nvml = None
        self._handles: list = []

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> ResourceMonitor:
        if self._thread is not None:
            return self
        self._nvml = _nvml()
        if self._nvml is not None:
            try:
                count = self._nvml.nvmlDeviceGetCount()
                indices = self._gpu_indices if self._gpu_indices is not None else range(count)
                self._handles = [(i, self._nvml.nvmlDeviceGetHandleByIndex(i))
                                 for i in indices if i < count]
            except Exception:  # noqa: BLE001 - no usable GPU: monitor RAM only
                self._handles = []
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bone-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._sample()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None
            self._handles = []

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss = tree_rss_bytes(self._process)
        gpu = []
        for index, handle in self._handles:
            try:
                used = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
                util = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                gpu.append((index, used, util))
            except Exception:  # noqa: BLE001 - a device that went away
                continue
        with self._lock:
            self._peak_rss = max(self._peak_rss, rss)
            if gpu:
                self._util_n += 1
            for index, used, util in gpu:
                self._peak_vram[index] = max(self._peak_vram.get(index, 0), used)
                self._util_sum[index] = self._util_sum.get(index, 0.0) + util

    def reset_peaks(self) -> None:
        """Start the peaks afresh (e.g. at each epoch)."""
        with self._lock:
            self._peak_rss = 0
            self._peak_vram = {}
            self._util_sum = {}
            self._util_n = 0
        self._sample()

    # Readings ---------------------------------------------------------------------------------

    @property
    def peak_rss_bytes(self) -> int:
        with self._lock:
            return self._peak_rss

    @property
    def peak_vram_bytes(self) -> int | None:
        """Highest used memory of any watched GPU (None without GPU)."""
        with self._lock:
            return max(self._peak_vram.values()) if self._peak_vram else None

    @property
    def mean_gpu_utilization(self) -> float | None:
        """Mean utilization (percent) over samples and watched GPUs (None without GPU)."""
        with self._lock:
            if not self._util_n or not self._util_sum:
                return None
            return sum(self._util_sum.values()) / (self._util_n * len(self._util_sum))

    def snapshot(self) -> dict:
        """The readings as plain data: peak_rss_bytes, peak_vram_bytes, mean_gpu_utilization,
        and per-GPU peaks."""
        with self._lock:
            per_gpu = {str(i): v for i, v in self._peak_vram.items()}
        return {
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_vram_bytes": self.peak_vram_bytes,
            "mean_gpu_utilization": self.mean_gpu_utilization,
            "peak_vram_bytes_per_gpu": per_gpu,
        }
