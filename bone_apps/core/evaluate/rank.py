"""The paper's weighted score of models (§2.5.3) and its sensitivity sweep (Table 7).

Every metric is min-max normalized over the models ranked together:

    higher is better (mIoU, batch, GPU utilization):    x_norm = (x - min) / (max - min)
    lower is better (FLOPs, parameters, VRAM, time):   x_norm = 1 - (x - min) / (max - min)

and a metric equal for every model scores 1 for each (nothing separates them, and a 0/0
would be undefined). The weighted score is

    score = w * mIoU_norm + (1 - w) / m * (sum of the m efficiency terms)

with w = 0.85 in the paper and m = 6 (0.025 each). Here the efficiency weight is spread
evenly over the efficiency metrics that were measured for every model; one that is null for
any model (GPU figures of a CPU run, FLOPs not counted) is left out, and the report says so.
The sweep recomputes the ranking for w = 1.00, 0.95, ..., 0.70 and keeps the top three.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bone_apps.core.errors import BoneAppsError

# Metric -> higher is better; the order of the paper's formula.
METRICS = {"miou": True, "batch": True, "gpu_util": True, "flops": False, "params": False,
           "vram": False, "fit_time": False}
EFFICIENCY = tuple(m for m in METRICS if m != "miou")
# How the metrics are named for people (tables, notes).
METRIC_NAMES = {"miou": "mIoU", "batch": "batch", "gpu_util": "GPU util", "flops": "FLOPs",
                 "params": "params", "vram": "VRAM", "fit_time": "fit time"}
PAPER_MIOU_WEIGHT = 0.85
SWEEP_WEIGHTS = tuple(round(1.0 - 0.05 * i, 2) for i in range(7))  # 1.00 ... 0.70
TOP = 3


@dataclass(frozen=True)
class RankedModel:
    """One model's weighted score and its normalized terms (None: metric left out)."""

    name: str
    score: float
    terms: dict[str, float | None]
    figures: dict[str, float | None]


@dataclass(frozen=True)
class Ranking:
    """Models best first, the weights used, and the metrics left out with the reason."""

    models: tuple[RankedModel, ...]
    miou_weight: float
    efficiency_weight: float  # per measured efficiency metric
    measured: tuple[str, ...]
    left_out: dict[str, str]

    def to_dict(self) -> dict:
        return {"miou_weight": self.miou_weight, "efficiency_weight_per_metric": self.efficiency_weight,
                "measured": list(self.measured), "left_out": dict(self.left_out),
                "models": [{"rank": i + 1, "name": m.name, "score": m.score, "terms": m.terms,
                            "figures": m.figures} for i, m in enumerate(self.models)]}


def _number(value: object, name: str, metric: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise BoneAppsError(f"model {name} has {metric} {value!r}, which is not a number: fix the "
                            "benchmark file or run bone bench again.")
    return number


def normalize(values: Sequence[float], higher_is_better: bool) -> list[float]:
    """Min-max normalization as in the paper; every value 1 when all are equal."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    scaled = [(v - low) / (high - low) for v in values]
    return scaled if higher_is_better else [1.0 - s for s in scaled]


def rank(rows: Sequence[dict], miou_weight: float = PAPER_MIOU_WEIGHT) -> Ranking:
    """Weighted scores of the models in `rows` (bench.json rows: name, miou and the cost
    figures batch, gpu_util, flops, params, vram, fit_time; null where not measured).

    Raises:
        BoneAppsError: no rows, a weight outside [0, 1], a model without a name or mIoU, two
            models of one name, or a figure that is not a number.
    """
    if not 0.0 <= miou_weight <= 1.0:
        raise BoneAppsError(f"mIoU weight {miou_weight} must be between 0 and 1 (the paper: 0.85).")
    if not rows:
        raise BoneAppsError("there are no models to rank: the benchmark has no finished "
                            "configuration yet (run bone bench).")
    names = [str(r.get("name") or "") for r in rows]
    if not all(names):
        raise BoneAppsError("a model of the benchmark has no name: fix the file or run bone bench again.")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise BoneAppsError(f"model {twice} appears twice: rank each model once.")
    figures = {n: {m: _number(r.get(m), n, m) for m in METRICS} for n, r in zip(names, rows)}
    missing = [n for n in names if figures[n]["miou"] is None]
    if missing:
        raise BoneAppsError(f"model {missing[0]} has no mIoU, so it cannot be ranked: finish its "
                            "fit (run bone bench again) or leave it out.")
    left_out = {}
    for metric in EFFICIENCY:
        absent = [n for n in names if figures[n][metric] is None]
        if len(absent) == len(names):
            left_out[metric] = "not measured for any model"
        elif absent:
            left_out[metric] = "not measured for " + ", ".join(absent)
    measured = tuple(m for m in EFFICIENCY if m not in left_out)
    each = (1.0 - miou_weight) / len(measured) if measured else 0.0
    terms = {n: dict.fromkeys(METRICS) for n in names}
    for metric in ("miou", *measured):
        for n, value in zip(names, normalize([figures[n][metric] for n in names], METRICS[metric])):
            terms[n][metric] = value
    models = [RankedModel(n, miou_weight * terms[n]["miou"] + each * sum(terms[n][m] for m in measured),
                          terms[n], figures[n]) for n in names]
    models.sort(key=lambda m: (-m.score, -m.figures["miou"], m.name))
    return Ranking(tuple(models), miou_weight, each, measured, left_out)


def sweep(rows: Sequence[dict], weights: Sequence[float] = SWEEP_WEIGHTS, top: int = TOP) -> list[dict]:
    """Table 7: for each mIoU weight, the efficiency weight per metric and the top models."""
    result = []
    for weight in weights:
        ranking = rank(rows, weight)
        result.append({"miou_weight": weight, "efficiency_weight_per_metric": ranking.efficiency_weight,
                       "top": [{"name": m.name, "score": m.score} for m in ranking.models[:top]]})
    return result


def ranking_table(ranking: Ranking) -> tuple[list[str], list[list[str]]]:
    """The ranking as text cells, best first: (column heads, rows) with rank, model, score and
    the normalized terms of mIoU and of each measured efficiency metric (1 is best)."""
    used = ["miou", *ranking.measured]
    head = ["rank", "model", "score"] + [METRIC_NAMES[m] for m in used]
    return head, [[str(i), m.name, f"{m.score:.4f}"] + [f"{m.terms[k]:.4f}" for k in used]
                  for i, m in enumerate(ranking.models, 1)]


def sweep_table(table7: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """The sensitivity sweep (`sweep`'s result) as text cells, laid out like Table 7: mIoU
    weight, efficiency weight per metric, then the top models with their scores."""
    top = max((len(e["top"]) for e in table7), default=0)
    ordinal = {1: "1st", 2: "2nd", 3: "3rd"}
    head = ["mIoU weight", "efficiency weight per metric"] + [ordinal.get(i, f"{i}th")
                                                             for i in range(1, top + 1)]
    rows = [[f"{e['miou_weight']:.2f}", f"{e['efficiency_weight_per_metric']:.4f}"]
            + [f"{t['name']} ({t['score']:.4f})" for t in e["top"]] + [""] * (top - len(e["top"]))
            for e in table7]
    return head, rows


def read_bench(path: str | os.PathLike) -> tuple[Path, dict]:
    """bench.json from a benchmark folder or the file itself: (its path, its content).

    Raises:
        BoneAppsError: no such file, not JSON, or not a benchmark written by bone bench.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "bench.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoneAppsError(f"{path} does not exist: give the folder bone bench wrote (or its "
                            "bench.json).") from None
    except OSError as exc:
        raise BoneAppsError(f"{path} cannot be read ({exc.strerror}): check the path.") from None
    except ValueError:
        raise BoneAppsError(f"{path} is not valid JSON: give the bench.json that bone bench wrote.") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise BoneAppsError(f"{path} holds no benchmark rows: give the bench.json that bone bench wrote.")
    return path, data
