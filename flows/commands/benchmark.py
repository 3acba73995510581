"""`mrifoundry benchmark`: does pretraining help? Cohort, pretraining, evaluation and report in one command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    b = subparsers.add_parser(
        "benchmark",
        help="generate a cohort, pretrain on its unlabelled pool, evaluate vs baselines, write the report",
        description="Does pretraining help? Generates a labelled cohort with planted signals and an unlabelled "
        "pool, pretrains on the pool, compares the encoder with random init, a scratch CNN, a CNN-MAE and "
        "handcrafted features on fixed splits, and writes the HTML report. The cpu preset takes ~19 min on "
        "2 cores (docs/evaluation.md has the latest numbers).",
    )
    b.add_argument("--warehouse", type=Path, required=True, help="warehouse folder for the cohort (best a new one)")
    b.add_argument("--preset", default="cpu", help="cpu (2 cores, <= 30 min), small (one GPU), tiny (smoke)")
    b.add_argument(
        "--seed", type=int, default=0, help="cohort seed (default 0: the reported cohort; others replicate it)"
    )
    b.add_argument("--subjects", type=int, default=None, help="override the preset's cohort size")
    b.add_argument(
        "--steps", type=int, default=None, help="override the preset's pretraining steps (the preset's were tuned)"
    )
    b.add_argument("--json", action="store_true", help="print only the per-task results as JSON on stdout")
    b.set_defaults(handler=run)
    return b


def run(args: argparse.Namespace) -> int:
    from flows.benchmark import benchmark_flow

    t0 = time.perf_counter()
    out = benchmark_flow(
        str(args.warehouse), preset=args.preset, seed=args.seed, subjects=args.subjects, steps=args.steps
    )
    ev = out["evaluate"]
    lines = [
        *ev["verdict"],
        f"report: {ev['evaluation_report']}",
        f"benchmark took {(time.perf_counter() - t0) / 60:.1f} min",
    ]
    if args.json:
        print_json(out["result"])
        print("\n".join(lines), file=sys.stderr)
    else:
        print_json({"corpus": out["corpus"], "pretrain": out["pretrain"], "across_tasks": ev["across_tasks"]})
        print("\n".join(lines))
    return 0
