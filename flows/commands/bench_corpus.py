"""`mrifoundry bench-corpus`: a benchmark cohort generated on the model grid, written into a warehouse.

Runs without Prefect on purpose: other issues' benchmarks call it as a setup step and it must start
in a second; the `benchmark` flow wraps the same function in a task.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    b = subparsers.add_parser(
        "bench-corpus",
        help="generate a labelled benchmark cohort (T1w/T2w/FLAIR, splits, unlabelled pool) into a warehouse",
    )
    b.add_argument("--subjects", type=int, required=True, help="subjects in total (labelled + unlabelled pool)")
    b.add_argument("--warehouse", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--pool-fraction", type=float, default=0.4, help="share of subjects kept unlabelled for pretraining")
    b.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    b.set_defaults(handler=run)
    return b


def run(args: argparse.Namespace) -> int:
    from synth.cohort import CohortConfig
    from tasks.bench_corpus import write_bench_corpus
    from tasks.context import open_warehouse

    cfg = CohortConfig(n_subjects=args.subjects, seed=args.seed, pool_fraction=args.pool_fraction)
    out = write_bench_corpus(open_warehouse(args.warehouse), cfg, workers=args.workers)
    print_json(asdict(out))
    return 0
