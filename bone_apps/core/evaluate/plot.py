"""Per-scan mIoU by fold, in the style of the paper's Fig. 9: one column per test scan, grouped
by fold, one point per seed, and each fold's mean as a line, so that a scan the models find
hard stands out from its fold."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from bone_apps.core.io.outputs import write_atomic

_MARKERS = "osD^v<>ph*"


def plot_available() -> bool:
    """Whether matplotlib, which draws the plot, is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_cv_plot(path: str | os.PathLike, rows: Sequence[dict], folds: Sequence[Sequence[str]],
                  seeds: Sequence[int]) -> Path | None:
    """Draw the per-scan mIoU of `rows` (fold, seed, scan, miou) to a PNG at `path`
    (atomically). Returns the path, or None when matplotlib is not installed.

    Raises:
        OutputWriteError: the file cannot be written.
    """
    png = cv_plot_png(rows, folds, seeds)
    if png is None:
        return None
    return write_atomic(path, png)


def cv_plot_png(rows: Sequence[dict], folds: Sequence[Sequence[str]], seeds: Sequence[int]) -> bytes | None:
    """The per-scan mIoU plot of `rows` (fold, seed, scan, miou; cv.json's "scans") as PNG
    bytes: one column per test scan of `folds`, one point per seed, fold means dashed. None
    when matplotlib is not installed. Draws on its own figure (no pyplot), so any thread may
    call it."""
    if not plot_available():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [(f, scan) for f, scans in enumerate(folds, 1) for scan in scans]
    x_of = {key: i for i, key in enumerate(columns)}
    figure = Figure(figsize=(max(6.0, 0.45 * len(columns) + 2.0), 4.5), dpi=120,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(seeds))]
    spread = 0.25
    for k, seed in enumerate(seeds):
        offset = (k - (len(seeds) - 1) / 2) * (spread / max(1, len(seeds) - 1)) if len(seeds) > 1 else 0
        mine = [r for r in rows if r["seed"] == seed and r["miou"] is not None
                and (r["fold"], r["scan"]) in x_of]
        axes.scatter([x_of[(r["fold"], r["scan"])] + offset for r in mine], [r["miou"] for r in mine],
                     s=28, color=colours[k], marker=_MARKERS[k % len(_MARKERS)],
                     label=f"seed {seed}", zorder=3)
    start, labelled = 0, False
    for f, scans in enumerate(folds, 1):
        scores = [r["miou"] for r in rows if r["fold"] == f and r["miou"] is not None]
        end = start + len(scans)
        if scores:
            axes.hlines(sum(scores) / len(scores), start - 0.4, end - 0.6, colors="0.45",
                        linestyles="--", linewidth=1, zorder=2,
                        label=None if labelled else "fold mean (all seeds)")
            labelled = True
        axes.text((start + end - 1) / 2, 1.0, f"fold {f}", transform=axes.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=9)
        if f < len(folds):
            axes.axvline(end - 0.5, color="0.8", linewidth=1, zorder=1)
        start = end
    axes.set_xticks(range(len(columns)), [scan for _, scan in columns], rotation=60, ha="right",
                    fontsize=8)
    axes.set_xlim(-0.6, len(columns) - 0.4)
    axes.set_ylabel("mIoU of the test scan")
    axes.grid(axis="y", color="0.9", zorder=0)
    # Outside the axes, so that no point of a scan hides behind it.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
