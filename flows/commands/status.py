"""`mrifoundry status`: what is in a warehouse, in words or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.commands.common import fmt_rows


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = subparsers.add_parser("status", help="series by state and reason, volumes by class and QC decision, runs")
    s.add_argument("--warehouse", type=Path, required=True)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=run)
    return s


def run(args: argparse.Namespace) -> int:
    return print_status(args.warehouse, args.json)


def print_status(warehouse: Path, as_json: bool) -> int:
    from tasks.context import open_existing_warehouse
    from warehouse.queries import status

    st = status(open_existing_warehouse(warehouse).manifest)
    if as_json:
        print(json.dumps(st, default=str, indent=2))
        return 0
    for title, key in (
        ("Series by state and reason", "series_by_state"),
        ("Series by class", "series_by_class"),
        ("Skipped files (unreadable, duplicate)", "rejected_files"),
        ("Volumes by class and QC decision", "volumes_by_decision"),
        ("QC reasons", "qc_reasons"),
        ("Snapshots", "snapshots"),
        ("Recent runs", "runs"),
        ("Latest evaluation", "evaluations"),
    ):
        print(f"{title}:\n{fmt_rows(st[key])}\n")
    ck = st["latest_checkpoint"]
    print(
        "Latest checkpoint:",
        "(none)"
        if ck is None
        else f"{ck['checkpoint_id']} {ck['path']} "
        f"(preset {ck['preset']}, {ck['steps']} steps, loss {ck['final_loss']:.4f}, snapshot {ck['snapshot_id']})",
    )
    print(f"Shards: {st['shards']}")
    return 0
