"""`mrifoundry evaluate`: probe a checkpoint on the warehouse's labels beside its baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evaluate", help="probe the latest checkpoint on the labels vs a random encoder")
    e.add_argument("--warehouse", type=Path, required=True)
    e.add_argument("--checkpoint", default=None, help="checkpoint id (default: the latest)")
    e.set_defaults(handler=run)
    return e


def run(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_flow

    print_json(evaluate_flow(str(args.warehouse), checkpoint_id=args.checkpoint))
    return 0
