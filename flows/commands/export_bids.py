"""`mrifoundry export-bids`: write a snapshot as a BIDS-derivatives dataset for other tools."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "export-bids"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        COMMAND,
        help="write a snapshot's volumes as a BIDS-derivatives dataset (MNI-space images, masks, QC)",
        description=(
            "Write every volume of a snapshot as BIDS derivatives: the registered image in MNI space, its "
            "brain mask, a per-session scans.tsv with the QC metrics and decisions, and a "
            "dataset_description.json naming the snapshot. Subject and session labels are the pseudonyms."
        ),
    )
    p.add_argument("--warehouse", type=Path, required=True)
    p.add_argument("--snapshot", required=True, help="snapshot id (`mrifoundry status` lists them) or 'latest'")
    p.add_argument("out", type=Path, help="dataset folder to create (must not exist or be empty)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tasks.context import code_version, open_existing_warehouse
    from tasks.export_bids import export_bids
    from warehouse.queries import latest_snapshot

    manifest = open_existing_warehouse(args.warehouse).manifest
    snapshot = args.snapshot
    if snapshot == "latest":
        snapshot = latest_snapshot(manifest)
        if snapshot is None:
            raise LookupError(f"{args.warehouse} has no snapshot yet; run `mrifoundry curate` to make one")
    res = export_bids(manifest, snapshot, args.out, code_version=code_version())
    print(
        f"wrote {res.n_volumes} volumes of {res.n_subjects} subjects ({res.n_sessions} sessions) "
        f"from snapshot {res.snapshot_id} to {res.out}"
    )
    return 0
