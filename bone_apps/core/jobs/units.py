"""How long a job took and how much memory it used, as the reports and the windows write them.

Beside the monitor that measures both: every report of a fit, a prediction or an experiment
(CLI lines, the windows' result tables and labels) writes durations and sizes through these
two functions, so they read the same everywhere.
"""

from __future__ import annotations

UNKNOWN = "\u2014"  # an em dash: not measured (no GPU, no time yet)


def duration_text(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '42.3 s'; UNKNOWN for None, NaN or a negative time."""
    if seconds is None or seconds != seconds or seconds < 0:
        return UNKNOWN
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def bytes_text(value: float | None, unknown: str = UNKNOWN) -> str:
    """A memory size in binary units: '1.25 GiB', '512 MiB'; `unknown` for None."""
    if value is None:
        return unknown
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"
