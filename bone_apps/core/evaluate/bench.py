"""A benchmark grid: architecture x encoder x patch size, each fitted on the same pool and scored
on the same held-out scans, with the cost figures of the paper's §2.5.3.

`bench(config)` is a generator like core.fit's. Each configuration is an ordinary fit in
DIR/<arch>_<encoder>_<patch>/ on every scan but the test scans (split into training and
validation by the seed), followed by the prediction of the test scans into its pred/ folder
and their scores (runs.py). DIR/bench.json is written first (the plan, no rows) and again
after each configuration, with "complete": false until the last. Run it again to continue:
finished fits are kept, an unfinished fit resumes.

Cost figures of a row, from the run's own records (summary.json, config.json):
  batch     patches per update, as fitted (Easy mode may have shrunk it)
  gpu_util  mean GPU utilization during the run, percent (NVML); null when fitted on the CPU
  flops     fvcore's count for one forward pass of one batch (one multiply-add counts one);
            null when not counted (--no-profile, or fvcore could not trace the model)
  params    parameters of the network
  vram      peak GPU memory used during the run, bytes (NVML); null when fitted on the CPU
  fit_time  seconds in the fitting loop (setup and the final window check left out)
A figure that cannot be measured is null, never 0.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bone_apps.core.errors import FitConfigError
from bone_apps.core.evaluate.runs import (
    RunOutcome,
    RunPlan,
    check_same_plan,
    claim_experiment,
    execute_run,
    experiment_pairs,
    finite_mean,
    run_config,
    write_json,
)
from bone_apps.core.fit.config import FitConfig

KIND = "benchmark"
BENCH_JSON = "bench.json"
COST_FIGURES = ("batch", "gpu_util", "flops", "params", "vram", "fit_time")


@dataclass(frozen=True)
class BenchSpec:
    """One configuration of the grid; `batch` None keeps the fit options' batch."""

    arch: str
    encoder: str
    patch: int
    batch: int | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.encoder}:{self.patch}" + (f":{self.batch}" if self.batch else "")

    @property
    def key(self) -> str:
        """Its folder under the experiment folder."""
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.name.replace(":", "_"))

    @classmethod
    def parse(cls, text: str) -> BenchSpec:
        """ARCH:ENCODER:PATCH or ARCH:ENCODER:PATCH:BATCH.

        Raises:
            FitConfigError: another form, or a patch or batch that is not a positive number.
        """
        parts = [p.strip() for p in str(text).split(":")]
        if len(parts) not in (3, 4) or not all(parts):
            raise FitConfigError(f"configuration {text!r} is not ARCH:ENCODER:PATCH (e.g. "
                                 "Unet:resnet18:256, or Unet:resnet18:256:32 with a batch).")
        try:
            numbers = [int(p) for p in parts[2:]]
        except ValueError:
            raise FitConfigError(f"configuration {text!r} has a patch size or batch that is not a "
                                 "whole number (e.g. Unet:resnet18:256).") from None
        if min(numbers) < 1:
            raise FitConfigError(f"configuration {text!r} has a patch size or batch below 1.")
        return cls(parts[0], parts[1], numbers[0], numbers[1] if len(numbers) > 1 else None)


def grid(archs: Sequence[str], encoders: Sequence[str], patches: Sequence[int]) -> list[BenchSpec]:
    """Every architecture x encoder x patch size, in that nesting order."""
    return [BenchSpec(a, e, int(p)) for a in archs for e in encoders for p in patches]


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark: `fit` holds the options every fit shares (its data or pairs name the scans,
    its seed and val_scans split the pool, its out is ignored); `out` the experiment folder;
    `test_scans` the held-out scans every configuration is scored on; `configs` the grid."""

    fit: FitConfig
    out: str
    test_scans: tuple[str, ...]
    configs: tuple[BenchSpec, ...]


@dataclass(frozen=True)
class BenchMessage:
    """A line for the user."""

    text: str


@dataclass(frozen=True)
class BenchResult:
    """How the benchmark ended ("completed" or "stopped"); `data` is bench.json's content."""

    out: Path
    status: str
    data: dict
    files: dict[str, Path | None] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchUpdated:
    """bench.json's content so far: yielded with the plan (no rows) and after each
    configuration's row is in."""

    data: dict


@dataclass(frozen=True)
class BenchFinished:
    """The last record: the result."""

    result: BenchResult


def _check_specs(config: BenchConfig) -> list[BenchSpec]:
    """The grid with registry spellings, refused before any work when a name is unknown."""
    from bone_apps.core.data.sampling import Dims
    from bone_apps.core.model.models import canonical_architecture, check_encoder

    if not config.configs:
        raise FitConfigError("no configuration was given: give --configs ARCH:ENCODER:PATCH ... or "
                             "--grid ARCHS ENCODERS PATCHES.")
    dims = Dims.parse(config.fit.dims).value
    specs = [BenchSpec(canonical_architecture(s.arch, dims), check_encoder(s.encoder, dims), s.patch,
                       s.batch) for s in config.configs]
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FitConfigError(f"configuration {twice[0]} is given twice: list each once.")
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise FitConfigError("two configurations would share a folder name: give them names that "
                             "differ in letters or digits.")
    return specs


def plan_bench(config: BenchConfig) -> tuple[list[BenchSpec], list, list]:
    """(grid, pool pairs, test pairs), with every refusal made before anything is written."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise FitConfigError("a benchmark runs its fits one after another in one process: start it "
                             "without torchrun (each fit uses every GPU given by {device}).", "device")
    config.fit.validate()
    pairs = experiment_pairs(config.fit)
    ids = [p.id for p in pairs]
    if not config.test_scans:
        raise FitConfigError("no test scans were given: name them with --test-scans ID ...")
    unknown = [t for t in config.test_scans if t not in ids]
    if unknown:
        raise FitConfigError(f"--test-scans names {', '.join(unknown)}, which are not among the scans "
                             f"({', '.join(ids[:6])}{', ...' if len(ids) > 6 else ''}): use those names.")
    tests = [p for p in pairs if p.id in set(config.test_scans)]
    pool = [p for p in pairs if p.id not in set(config.test_scans)]
    if len(pool) < 2:
        raise FitConfigError(f"--test-scans leaves {len(pool)} scan for fitting, so the pool has no "
                             "validation scan: hold out fewer scans.")
    val = [v for v in config.fit.val_scans if v in {p.id for p in pool}]
    if config.fit.val_scans and not val:
        raise FitConfigError("every {val_scans} scan is a test scan, so the pool has no validation "
                             "scan: name validation scans outside --test-scans.", "val_scans")
    if val and len(val) == len(pool):
        raise FitConfigError("{val_scans} names every scan of the pool, so nothing is left to fit: "
                             "name fewer validation scans.", "val_scans")
    return _check_specs(config), pool, tests


def bench(config: BenchConfig, stop: threading.Event | None = None
          ) -> Generator[object, None, BenchResult]:
    """Fit, predict and score every configuration of `config`, yielding progress; the last
    record is BenchFinished.

    Records: BenchMessage, BenchUpdated (bench.json's content, at the start and after each
    configuration), and from runs.py RunStarted, RunProgress, ScanScored.

    Raises:
        FitConfigError: unknown test scans, a pool without a validation scan, unknown
            architectures or encoders, or a folder holding another benchmark.
        BoneAppsError: whatever a fit, a prediction or the scoring refuses.
    """
    stop = stop or threading.Event()
    specs, pool, tests = plan_bench(config)
    out = Path(config.out).expanduser()
    template = config.fit.replace(out=str(out))
    lock = claim_experiment(out, KIND, [BENCH_JSON, *(s.key for s in specs)])
    try:
        plan = {"kind": KIND, "complete": False, "test_scans": [p.id for p in tests],
                "pool": [p.id for p in pool], "seed": template.seed,
                "configs": [{"name": s.name, "arch": s.arch, "encoder": s.encoder, "patch": s.patch,
                             "batch": s.batch, "run": s.key} for s in specs],
                "fit_config": template.to_dict(), "cost_figures": _COST_TEXT, "rows": []}
        _check_earlier(out, plan, template, [s.key for s in specs])
        write_json(out / BENCH_JSON, plan)
        yield BenchUpdated(plan)
        yield BenchMessage(f"{len(specs)} configuration(s) fitted on {len(pool)} scans and scored on "
                           f"{len(tests)} ({', '.join(p.id for p in tests)}) into {out}")
        rows: list[dict] = []
        status = "completed"
        for index, spec in enumerate(specs):
            changes = {"arch": spec.arch, "encoder": spec.encoder, "patch": spec.patch}
            if spec.batch:
                changes["batch"] = spec.batch
            run = RunPlan(spec.key, spec.name, run_config(template, out / spec.key, pool, **changes),
                          tuple(tests))
            outcome: RunOutcome = yield from execute_run(run, out, index, len(specs), stop)
            if outcome.status != "completed":
                status = "stopped"
                break
            rows.append(bench_row(spec, outcome))
            now = {**plan, "complete": index + 1 == len(specs), "rows": list(rows)}
            write_json(out / BENCH_JSON, now)
            yield BenchUpdated(now)
        data = {**plan, "complete": status == "completed", "rows": rows}
    finally:
        lock.release()
    result = BenchResult(out, status, data, {"json": out / BENCH_JSON})
    yield BenchFinished(result)
    return result


_COST_TEXT = {
    "batch": "patches per update, as fitted",
    "gpu_util": "mean GPU utilization during the run, percent (NVML); null on the CPU",
    "flops": "fvcore FLOPs of one forward pass of one batch; null when not counted",
    "params": "parameters of the network",
    "vram": "peak GPU memory used during the run, bytes (NVML); null on the CPU",
    "fit_time": "seconds in the fitting loop",
}


def _check_earlier(out: Path, plan: dict, template: FitConfig, keys: Sequence[str]) -> None:
    """Refuse to continue a benchmark in `out` that was started with other scans or options
    (a folder where no fit has started yet takes the new plan)."""
    path = out / BENCH_JSON
    differs = check_same_plan(path, plan, ("test_scans", "pool"), template, out, keys)
    if differs:
        what = {"test_scans": "test scans", "pool": "pool of scans"}.get(differs, differs)
        raise FitConfigError(f"{out} holds a benchmark with other {what}: give the options it was "
                             f"started with (see {path}), or another --out.")


def bench_row(spec: BenchSpec, outcome: RunOutcome) -> dict:
    """bench.json's row of a finished configuration: scores averaged over the test scans (per
    class: over the scans where the class is present) and the cost figures."""
    summary, config = outcome.fit, outcome.config
    on_gpu = str(summary.get("device", "cpu")) != "cpu"
    peaks = summary.get("peaks") or {}
    complexity = summary.get("complexity") or {}
    classes = list(outcome.rows[0]["iou"]) if outcome.rows else []
    return {
        "name": spec.name, "arch": spec.arch, "encoder": spec.encoder, "patch": spec.patch,
        "run": spec.key,
        "miou": finite_mean([r["miou"] for r in outcome.rows]),
        "mdice": finite_mean([r["mdice"] for r in outcome.rows]),
        "iou": {c: finite_mean([r["iou"].get(c) for r in outcome.rows]) for c in classes},
        "dice": {c: finite_mean([r["dice"].get(c) for r in outcome.rows]) for c in classes},
        "batch": config.get("batch"),
        "gpu_util": peaks.get("mean_gpu_utilization") if on_gpu else None,
        "flops": complexity.get("flops_per_batch"),
        "params": complexity.get("parameters"),
        "vram": peaks.get("peak_vram_bytes") if on_gpu else None,
        "fit_time": (summary.get("times") or {}).get("fit_loop_s"),
        "device": summary.get("device"),
        "best_val_iou": summary.get("best_val_iou"),
        "scans": outcome.rows,
    }


def bench_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """bench.json's rows as text cells: (column heads, rows) with the configuration, mIoU,
    IoU per class and the cost figures in readable units ("-": not measured)."""
    def num(value, form: str) -> str:
        return "-" if value is None else format(value, form)

    def scaled(value, scale: float) -> float | None:
        return None if value is None else value / scale

    classes = list(rows[0]["iou"]) if rows else []
    head = ["configuration", "mIoU", *classes, "batch", "GPU %", "GFLOPs", "params (M)",
            "VRAM (GB)", "fit (s)"]
    table = [[r["name"], num(r["miou"], ".4f"), *[num(r["iou"].get(c), ".4f") for c in classes],
              num(r["batch"], "d"), num(r["gpu_util"], ".1f"), num(scaled(r["flops"], 1e9), ".2f"),
              num(scaled(r["params"], 1e6), ".2f"), num(scaled(r["vram"], 1e9), ".2f"),
              num(r["fit_time"], ".1f")] for r in rows]
    return head, table
