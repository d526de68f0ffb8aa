"""`bone rank`: weighted scores of a benchmark's models and the sensitivity sweep (Table 7)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rank", help="rank a benchmark's models by weighted mIoU and cost (Table 7)",
        description="Read DIR/bench.json (written by bone bench) and print each model's weighted "
                    "score: every metric min-max normalized over the models (higher is better "
                    "for mIoU, batch and GPU utilization, lower for FLOPs, parameters, VRAM and "
                    "fitting time; a metric equal for all models scores 1), mIoU weighted by "
                    "--miou-weight and the rest spread evenly over the efficiency metrics "
                    "measured for every model. Then the sensitivity sweep of the paper's Table 7: "
                    "the top three at mIoU weights 1.00, 0.95, ..., 0.70.")
    parser.add_argument("bench", type=Path, metavar="DIR",
                        help="the folder bone bench wrote (or its bench.json)")
    parser.add_argument("--miou-weight", type=float, default=0.85, metavar="W",
                        help="weight of the normalized mIoU, 0 to 1 (0.85, as in the paper)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the ranking as JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --json file (only one bone_apps wrote)")
    parser.set_defaults(func=run, command="rank")


def ranking_text(ranking, sweep: list[dict]) -> str:
    """The ranking and the sweep as text tables."""
    from bone_apps.core.evaluate.rank import METRIC_NAMES, ranking_table

    lines = [f"weights: mIoU {ranking.miou_weight:g}, efficiency {1 - ranking.miou_weight:g} spread "
             f"over {len(ranking.measured)} measured metric(s), {ranking.efficiency_weight:.4g} each"
             + (f" ({', '.join(METRIC_NAMES[m] for m in ranking.measured)})" if ranking.measured else "")]
    for metric, why in ranking.left_out.items():
        lines.append(f"left out: {METRIC_NAMES[metric]} ({why})")
    head, rows = ranking_table(ranking)
    table = [head, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines.append("normalized terms (1 is best):")
    lines += ["  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in table]
    lines.append("")
    lines.append("sensitivity (Table 7): mIoU weight, efficiency weight per metric, top models")
    for entry in sweep:
        top = "  ".join(f"{i}. {t['name']} ({t['score']:.4f})" for i, t in enumerate(entry["top"], 1))
        lines.append(f"{entry['miou_weight']:.2f}  {entry['efficiency_weight_per_metric']:.4f}  {top}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.evaluate.rank import rank, read_bench, sweep
    from bone_apps.core.io.outputs import check_target, write_json_file

    if args.json is not None:
        check_target(args.json, args.overwrite)  # before any work
    path, data = read_bench(args.bench)
    rows = data["rows"]
    ranking = rank(rows, args.miou_weight)
    table7 = sweep(rows)
    if not data.get("complete", True):
        print(f"note: the benchmark in {path} is unfinished ({len(rows)} of "
              f"{len(data.get('configs', rows))} configurations); run bone bench again to finish it.")
    print(ranking_text(ranking, table7))
    if args.json is not None:
        write_json_file(args.json, {"source": str(path), **ranking.to_dict(), "sweep": table7},
                        overwrite=args.overwrite)
        print(f"written: {args.json}")
    return 0
