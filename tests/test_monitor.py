"""The resource monitor thread."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bone_apps.core.jobs.monitor import ResourceMonitor, cuda_available_cheaply, tree_rss_bytes

_GROWTH_PROBE = """
import threading, time
import numpy as np, psutil
from bone_apps.core.jobs.monitor import ResourceMonitor
with ResourceMonitor(interval=0.05) as monitor:
    time.sleep(0.2)
    before = monitor.peak_rss_bytes
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MB, touched
    time.sleep(0.3)
    grown = monitor.peak_rss_bytes - before
    del block
alive = [t for t in threading.enumerate() if t.name == "bone-resource-monitor"]
snap = monitor.snapshot()
print(grown, len(alive), snap["peak_rss_bytes"], sorted(snap))
"""


def test_monitor_sees_memory_grow_and_stops():
    # A fresh process: in the test process, memory freed by earlier tests could be reused
    # without the resident size growing.
    done = subprocess.run([sys.executable, "-c", _GROWTH_PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    grown, alive, peak, keys = done.stdout.split(maxsplit=3)
    assert int(grown) >= 48 << 20
    assert int(alive) == 0  # the sampling thread ended with the block
    assert int(peak) > 0
    assert "peak_vram_bytes" in keys and "mean_gpu_utilization" in keys


def test_without_gpu_readings_are_none():
    if cuda_available_cheaply():
        pytest.skip("a GPU machine reports numbers instead")
    with ResourceMonitor(interval=0.05) as monitor:
        time.sleep(0.1)
    assert monitor.peak_vram_bytes is None and monitor.mean_gpu_utilization is None
    assert tree_rss_bytes() > 0
