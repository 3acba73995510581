"""`mrifoundry failures`: every rejected file, rejected or failed series and QC-failed volume, and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.commands.common import fmt_rows


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    f = subparsers.add_parser(
        "failures", help="list rejected files and series with their reason and pseudonymised path"
    )
    f.add_argument("--warehouse", type=Path, required=True)
    f.add_argument("--reason", default=None, help="only this reason (e.g. registration_failed, unreadable)")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.set_defaults(handler=run)
    return f


def run(args: argparse.Namespace) -> int:
    from tasks.context import open_existing_warehouse
    from warehouse.curation_queries import failures

    rows = failures(open_existing_warehouse(args.warehouse).manifest, args.reason)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    shown = [{k: r[k] for k in ("kind", "reason", "path", "label", "detail")} for r in rows]
    for r in shown:
        r["label"] = r["label"] or ""
        r["detail"] = (r["detail"] or "")[:80]
    print(fmt_rows(shown))
    print(f"\n{len(rows)} failure(s)" + (f" with reason {args.reason}" if args.reason else ""))
    return 0
