"""`mrifoundry pretrain`: JEPA-MoE pretraining on a warehouse snapshot."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = subparsers.add_parser("pretrain", help="pretrain the JEPA-MoE model on the latest snapshot")
    t.add_argument("--warehouse", type=Path, required=True)
    t.add_argument("--preset", default="tiny", help="model preset: tiny (CPU), small, base")
    t.add_argument("--snapshot", default=None, help="snapshot id (default: the latest)")
    t.add_argument("--steps", type=int, default=None, help="override the preset's number of training steps")
    t.set_defaults(handler=run)
    return t


def run(args: argparse.Namespace) -> int:
    from flows.pretrain import pretrain_flow

    result = pretrain_flow(str(args.warehouse), preset=args.preset, snapshot_id=args.snapshot, steps=args.steps)
    print_json({k: v for k, v in result.items() if k != "losses"})
    return 0
