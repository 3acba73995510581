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
    from warehouse.lineage import lineage
    from warehouse.queries import status

    manifest = open_existing_warehouse(warehouse).manifest
    st = status(manifest)
    ck = st["latest_checkpoint"]
    st["lineage"] = [] if ck is None else lineage(manifest, ck["checkpoint_id"])
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
    print(
        "Latest checkpoint:",
        "(none)"
        if ck is None
        else f"{ck['checkpoint_id']} {ck['path']} "
        f"(preset {ck['preset']}, {ck['steps']} steps, loss {ck['final_loss']:.4f}, snapshot {ck['snapshot_id']})",
    )
    print_lineage(st["lineage"])
    print(f"Shards: {st['shards']}")
    return 0


def print_lineage(chain: list[dict]) -> None:
    """The latest checkpoint, then the checkpoint each one continued from, back to a from-scratch run."""
    if not chain:
        return
    print("Lineage (newest first; each continued from the next):")
    for r in chain:
        loss = "" if r["final_loss"] is None else f", loss {r['final_loss']:.4f}"
        print(f"  {r['checkpoint_id']} ({r['phase'] or 'main'}, snapshot {r['snapshot_id']}, {r['steps']} steps{loss})")
    if chain[-1]["parent_checkpoint_id"] is None:
        print("  <- trained from scratch")
    seen = chain[0]["snapshots_seen"] or [chain[0]["snapshot_id"]]
    print(f"Snapshots seen by the latest checkpoint ({len(seen)}): {', '.join(seen)}")
