"""`mrifoundry evaluate`: a checkpoint's encoder beside its baselines on the warehouse's labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = subparsers.add_parser(
        "evaluate", help="probe, fine-tune and compare the latest checkpoint with its baselines (paired CIs)"
    )
    e.add_argument("--warehouse", type=Path, required=True)
    e.add_argument("--checkpoint", default=None, help="checkpoint id (default: the latest)")
    e.add_argument("--preset", default="cpu", help="evaluation preset: tiny (tests), cpu (2 cores), small (GPU)")
    e.add_argument("--json", action="store_true", help="print only the per-task results as JSON")
    e.set_defaults(handler=run)
    return e


def run(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_flow

    out = evaluate_flow(str(args.warehouse), checkpoint_id=args.checkpoint, preset=args.preset)
    if args.json:
        print_json({"tasks": out["tasks"]})
    else:
        print_json({k: v for k, v in out.items() if k not in ("scores", "tasks")})
        print("\n".join(out["verdict"]))
    return 0
