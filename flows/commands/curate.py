"""`mrifoundry curate`: one DICOM export through ingest → QC → shards → snapshot."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands.common import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "curate", help="ingest a DICOM folder: classify, convert, register, skull-strip, QC, shard"
    )
    c.add_argument("source", type=Path, help="folder with the DICOM export (any layout, .dcm or .dcm.gz)")
    c.add_argument("--warehouse", type=Path, required=True, help="warehouse directory (created if missing)")
    c.add_argument("--labels", type=Path, default=None, help="CSV PatientID,lesion,enlarged_ventricles (optional)")
    c.add_argument(
        "--skullstrip",
        default="auto",
        choices=("auto", "deepbet", "synthstrip-docker"),
        help="skull-strip backend (auto: synthstrip-docker when a Docker engine answers, else deepbet)",
    )
    c.set_defaults(handler=run)
    return c


def run(args: argparse.Namespace) -> int:
    if not args.source.is_dir():
        raise FileNotFoundError(f"source {args.source} is not a directory; point it at a DICOM export folder")
    from flows.curate import curate_flow

    result = curate_flow(
        str(args.source),
        str(args.warehouse),
        skullstrip=args.skullstrip,
        labels_csv=str(args.labels) if args.labels else None,
    )
    print_json(result)
    return 0
