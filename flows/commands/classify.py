"""`mrifoundry classify SOURCE_DIR`: print the sequence class of every series in a DICOM folder (or of
every anat T1w/T2w/FLAIR file of a BIDS dataset, checked against its sidecar: `imaging.bids`).

Thin CLI wiring: the scan and the rules live in `imaging.classify` (the code the curation flow runs),
so what this prints is what `curate` would decide. Nothing is written anywhere; no Prefect needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "print T1w/T2w/FLAIR/other, contrast flag, confidence and explanation for every series of a folder"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `classify` subcommand on the main parser's subparsers."""
    p = subparsers.add_parser(
        "classify",
        help=HELP,
        description=(
            "Scan a DICOM folder (any layout, .dcm or .dcm.gz) and print one row per series: "
            "SeriesInstanceUID, series number and description, label (T1w/T2w/FLAIR/other), "
            "contrast-enhanced flag, confidence, review flag, explanation, and the ingest rejection "
            "reason where ingest refuses the series. Reads headers only; writes nothing."
        ),
    )
    p.add_argument("source", type=Path, help="folder with the DICOM export (or one file)")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="output format (default csv)")
    p.add_argument("--workers", type=int, default=None, help="header-reading processes (default: CPUs available)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run `classify`; returns the exit status (2 with a message on stderr for a bad source)."""
    from imaging.classify import classify_source, format_rows

    if not Path(args.source).exists():
        print(f"mrifoundry classify: error: source {args.source} does not exist; pass a DICOM folder", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"mrifoundry classify: error: --workers {args.workers} must be at least 1", file=sys.stderr)
        return 2
    from imaging.bids import classify_bids, is_bids_dataset, no_input_message

    source = Path(args.source)
    rows = classify_bids(source) if is_bids_dataset(source) else classify_source(source, workers=args.workers)
    if not rows:
        print(f"mrifoundry classify: error: {no_input_message(source)}", file=sys.stderr)
        return 2
    sys.stdout.write(format_rows(rows, args.format))
    if args.format == "json":
        sys.stdout.write("\n")
    return 0
