"""Table 6 of the paper from per-scan scores: cells, per-fold and per-seed margins, grand figure.

The rules, read off Table 6 and checked against its numbers (tests/test_cv.py):

* cell (fold f, seed s): mean and sample SD of the mIoU of fold f's test scans, scored with
  the model fitted on fold f's pool with seed s;
* per fold, across seeds (right column): mean and sample SD of all of fold f's scan scores
  of every seed together (fold 1: 0.9731 ± 0.0092 from three cells of four scans);
* per seed, across folds (bottom row): mean and sample SD of the K cell means of seed s
  (seed 42: 0.9208 ± 0.0522);
* grand (bottom right): mean and sample SD of the K x S cell means (0.9133 ± 0.0476).

Dice follows the same rules from each scan's mean Dice, shown in brackets. SDs are sample
SDs (n - 1); one value has none (null).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence

RULES = {
    "cell": "mean and sample SD of the fold's test-scan mIoU for one seed",
    "per_fold": "mean and sample SD of the fold's test-scan mIoU over every seed together",
    "per_seed": "mean and sample SD of the seed's fold (cell) means",
    "grand": "mean and sample SD of all fold x seed cell means",
    "dice": "the same rules applied to each scan's mean Dice",
}


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample SD (n - 1) of the finite values; SD None below two values, both None
    without values."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not kept:
        return None, None
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None


def _stats(miou: Sequence[float | None], dice: Sequence[float | None], **keys) -> dict:
    mean, sd = mean_sd(miou)
    dice_mean, dice_sd = mean_sd(dice)
    n = sum(v is not None for v in miou)
    return {**keys, "n": n, "mean": mean, "sd": sd, "dice_mean": dice_mean, "dice_sd": dice_sd}


def summarize(rows: Sequence[dict], folds: int, seeds: Sequence[int]) -> dict:
    """Table 6 from per-scan rows (dicts with fold, seed, miou, mdice).

    Returns {"cells", "per_fold", "per_seed", "grand"}: lists of dicts (fold and/or seed,
    n, mean, sd, dice_mean, dice_sd) and one dict; cells and margins of folds or seeds not
    scored yet have n 0 and null figures, and the margins use the cells there are.
    """
    cells = []
    for f in range(1, folds + 1):
        for s in seeds:
            mine = [r for r in rows if r["fold"] == f and r["seed"] == s]
            cells.append(_stats([r["miou"] for r in mine], [r["mdice"] for r in mine], fold=f, seed=s))
    per_fold = []
    for f in range(1, folds + 1):
        mine = [r for r in rows if r["fold"] == f]
        per_fold.append(_stats([r["miou"] for r in mine], [r["mdice"] for r in mine], fold=f))
    done = [c for c in cells if c["n"]]
    per_seed = [_stats([c["mean"] for c in done if c["seed"] == s],
                       [c["dice_mean"] for c in done if c["seed"] == s], seed=s) for s in seeds]
    grand = _stats([c["mean"] for c in done], [c["dice_mean"] for c in done])
    return {"cells": cells, "per_fold": per_fold, "per_seed": per_seed, "grand": grand}


def _figure(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {'–' if sd is None else f'{sd:.4f}'}"


def cell_text(stats: dict) -> str:
    """"0.9731 ± 0.0099 [0.9864 ± 0.0051]": mIoU, and mDice in brackets, as Table 6 shows them."""
    if stats["mean"] is None:
        return "–"
    return (f"{_figure(stats['mean'], stats['sd'])} "
            f"[{_figure(stats['dice_mean'], stats['dice_sd'])}]")


def table6_rows(summary: dict, seeds: Sequence[int]) -> tuple[list[str], list[list[str]]]:
    """Table 6 as text cells: (column heads, rows). One row per test fold (its cells, one per
    seed, then its figure across seeds) and a last row "Mean ± SD across folds" (the per-seed
    figures, then the grand figure). The same cells as cv.md and the windows' tables."""
    cells = {(c["fold"], c["seed"]): c for c in summary["cells"]}
    head = ["Test fold"] + [f"mIoU (seed {s})" for s in seeds] + ["Mean ± SD across seeds"]
    rows = [[str(r["fold"])] + [cell_text(cells[(r["fold"], s)]) for s in seeds] + [cell_text(r)]
            for r in summary["per_fold"]]
    rows.append(["Mean ± SD across folds"] + [cell_text(r) for r in summary["per_seed"]]
                + [cell_text(summary["grand"])])
    return head, rows


def table6_markdown(summary: dict, seeds: Sequence[int], scans_per_fold: Sequence[int]) -> str:
    """The summary as a Markdown table laid out like the paper's Table 6."""
    head, rows = table6_rows(summary, seeds)
    if rows[-1][-1] != "–":
        rows[-1][-1] = f"**{rows[-1][-1]}**"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    sizes = sorted(set(scans_per_fold))
    per = " or ".join(str(n) for n in sizes)
    lines += ["", f"mIoU ± sample SD over each fold's {per} test scans; brackets: mean Dice by the "
              "same rules. Right column: all of a fold's scan scores over every seed; bottom row: "
              "the fold means of a seed; bottom right: all fold x seed cell means "
              "(Lee et al., Table 6)."]
    return "\n".join(lines) + "\n"


def _scan_cells(row: dict, class_names: Sequence[str], num) -> list:
    return ([row["fold"], row["seed"], row["scan"], num(row["miou"]), num(row["mdice"])]
            + [num(row["iou"].get(c)) for c in class_names]
            + [num(row["dice"].get(c)) for c in class_names] + [row["prediction"]])


def scans_csv(rows: Sequence[dict], class_names: Sequence[str]) -> str:
    """One CSV line per fold x seed x test scan: scores per class and where the labels are."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "seed", "scan", "miou", "mdice"] + [f"iou_{c}" for c in class_names]
                    + [f"dice_{c}" for c in class_names] + ["prediction"])
    for r in rows:
        writer.writerow(_scan_cells(r, class_names, lambda v: "" if v is None else f"{v:.6f}"))
    return buffer.getvalue()


def scan_table(rows: Sequence[dict], class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The per-scan rows as text cells, the columns of cv.csv: (column heads, rows); scores
    to four decimals, "–" for a class in neither volume."""
    head = (["Fold", "Seed", "Scan", "mIoU", "mDice"] + [f"IoU {c}" for c in class_names]
            + [f"Dice {c}" for c in class_names] + ["Prediction"])
    return head, [[str(c) for c in _scan_cells(r, class_names, lambda v: "–" if v is None else f"{v:.4f}")]
                  for r in rows]
