"""The device grammar of every job (fitting, prediction, scoring): which strings name where it runs.

Parsing needs no GPU and imports no torch: a CUDA form parses on any machine, and whether the
GPUs it names exist is checked when a job resolves it.
"""

from __future__ import annotations

import re

from bone_apps.core.errors import BoneAppsError

# The forms a device string may take, as help texts and messages show them.
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "cuda:0,1", "cuda:all")
ALL_GPUS = "cuda:all"  # every visible GPU
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:all|cuda:\d+(,\d+)*)$")


class DeviceChoices(tuple):
    """DEVICE_FORMS as argparse `choices`: every string `parse_devices` accepts is a member."""

    def __contains__(self, text: object) -> bool:
        try:
            parse_devices(str(text))
        except BoneAppsError:
            return False
        return True


DEVICE_CHOICES = DeviceChoices(DEVICE_FORMS)


def parse_devices(text: str, error: type[BoneAppsError] = BoneAppsError) -> list[str]:
    """The device names a device string stands for, without looking at the hardware.

    Args:
        text: "auto", "cpu", "cuda", "cuda:N", "cuda:N,M,..." or "cuda:all" (case and spaces
            do not matter).
        error: the exception class to raise, so each job reports in its own terms.

    Returns:
        ["auto"], ["cpu"], ["cuda"], ["cuda:all"] or one "cuda:N" per GPU named, in the
        order given.

    Raises:
        error: `text` is none of the valid forms.
    """
    spec = str(text).strip().lower().replace(" ", "")
    if not _DEVICE_RE.match(spec):
        raise error(f"device {spec!r} is unknown: use {', '.join(DEVICE_FORMS[:-1])} or {DEVICE_FORMS[-1]}.")
    if spec in ("auto", "cpu", "cuda", ALL_GPUS):
        return [spec]
    return [f"cuda:{i}" for i in spec.split(":", 1)[1].split(",")]


def gpu_indices(devices: list[str], count: int) -> list[int]:
    """The GPU indices `parse_devices` output names on a machine with `count` GPUs ("cuda" and
    "auto": the first; "cuda:all": every one)."""
    if devices in (["auto"], ["cuda"]):
        return [0]
    if devices == [ALL_GPUS]:
        return list(range(count))
    return [int(d.split(":", 1)[1]) for d in devices if d.startswith("cuda:")]
