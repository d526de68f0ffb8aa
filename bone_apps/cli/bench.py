"""`bone bench`: fit, predict and score a grid of architecture x encoder x patch size (§2.5.2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bone_apps.cli.fit import add_fit_options

# Fit options the grid or the experiment sets itself.
_LEFT_OUT = ("out", "resume", "overwrite", "list_models", "arch", "encoder", "patch")


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="fit and score a grid of architectures, encoders and patch sizes",
        description="Fit every configuration on the scans that are not --test-scans (split into "
                    "training and validation by --seed) into OUT/<arch>_<encoder>_<patch>/, "
                    "predict the test scans into its pred/ folder and score them. Writes "
                    "OUT/bench.json: one row per configuration with its mIoU, per-class IoU and "
                    "the cost figures of the paper's weighted ranking (batch, GPU utilization, "
                    "FLOPs, parameters, peak VRAM, fitting time; null where this machine cannot "
                    "measure one, and FLOPs with --no-profile). Run the same command again to "
                    "continue after a stop; rank the rows with `bone rank OUT`. Takes the `bone "
                    "fit` options but --arch, --encoder and --patch (the configurations set them), "
                    "--resume and --overwrite (running again continues).",
        argument_default=None)
    grid = parser.add_argument_group("benchmark")
    grid.add_argument("--out", type=Path, required=True, metavar="DIR", help="experiment folder")
    grid.add_argument("--test-scans", nargs="+", required=True, metavar="ID",
                      help="scans every configuration is scored on (never fitted)")
    which = grid.add_mutually_exclusive_group(required=True)
    which.add_argument("--configs", nargs="+", metavar="ARCH:ENCODER:PATCH",
                       help="configurations, e.g. Unet:resnet18:256 UnetPlusPlus:resnet18:512 "
                            "(a fourth field sets that configuration's batch)")
    which.add_argument("--grid", nargs=3, metavar=("ARCHS", "ENCODERS", "PATCHES"),
                       help="every combination of comma-separated lists, e.g. "
                            "Unet,UnetPlusPlus resnet18,efficientnet-b3 256,512")
    add_fit_options(parser, leave_out=_LEFT_OUT)
    parser.set_defaults(func=run, command="bench")


def specs_from_args(args: argparse.Namespace) -> tuple:
    """The configurations of --configs or --grid."""
    from bone_apps.core.errors import FitConfigError
    from bone_apps.core.evaluate.bench import BenchSpec, grid

    if args.configs:
        return tuple(BenchSpec.parse(text) for text in args.configs)
    archs, encoders, patches = (_list(t) for t in args.grid)
    try:
        sizes = [int(p) for p in patches]
    except ValueError:
        raise FitConfigError(f"--grid patch sizes {args.grid[2]!r} must be whole numbers separated by "
                             "commas, e.g. 256,512.") from None
    if not (archs and encoders and sizes) or min(sizes) < 1:
        raise FitConfigError("--grid needs at least one architecture, one encoder and one positive "
                             "patch size, e.g. --grid Unet resnet18 256,512.")
    return tuple(grid(archs, encoders, sizes))


def rows_text(rows: list[dict]) -> str:
    """The benchmark's rows as an aligned table."""
    from bone_apps.core.evaluate.bench import bench_table

    head, cells = bench_table(rows)
    table = [head, *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in table)


def run(args: argparse.Namespace) -> int:
    from bone_apps.cli.cv import run_experiment
    from bone_apps.cli.fit import build_config
    from bone_apps.core.evaluate.bench import BenchConfig, bench

    template = build_config(args)
    # The grid names the model: Easy mode (which shrinks patch and batch) only when asked.
    template = template.replace(easy=bool(args.easy))
    config = BenchConfig(fit=template, out=str(args.out), test_scans=tuple(args.test_scans),
                         configs=specs_from_args(args))
    result, code = run_experiment(lambda stop: bench(config, stop), "bench")
    if code is not None:
        return code
    print(rows_text(result.data["rows"]))
    print(f"written: {result.files['json']}; rank the configurations with: bone rank {result.out}")
    return 0
