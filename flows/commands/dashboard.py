"""`mrifoundry dashboard`: serve the QC web app for a warehouse.

Only argparse and pathlib at import time, so `mrifoundry --help` stays instant; the web stack and
DuckDB are imported when the subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "serve the QC dashboard: review queue, mosaics, one-key ratings (127.0.0.1 unless given a token)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `dashboard` subcommand on the main parser's subparsers."""
    p = subparsers.add_parser(
        "dashboard",
        help=HELP,
        description=(
            "Serve the QC dashboard for a warehouse. It binds 127.0.0.1 by default; any other --host needs "
            "--token (or $MRIFOUNDRY_DASHBOARD_TOKEN). Ratings are stored in the manifest and override the "
            "automatic QC decision at the next shard build and snapshot."
        ),
    )
    p.add_argument("--warehouse", type=Path, required=True, help="warehouse directory (holds manifest.duckdb)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    p.add_argument(
        "--token",
        default=None,
        help="access token (>= 16 characters), required for a non-loopback --host; "
        "prefer $MRIFOUNDRY_DASHBOARD_TOKEN, which does not show in the process list",
    )
    p.add_argument("--rater", default=None, help="rater name stored when the browser sends none (default: OS user)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Start the server; returns a process exit code (2 for a refused configuration)."""
    from dashboard.server import build_server, resolve_token

    token = resolve_token(args.token)
    try:
        server = build_server(args.warehouse, args.host, args.port, token, args.rater)
    except (ValueError, FileNotFoundError) as err:
        print(f"mrifoundry dashboard: error: {err}", file=sys.stderr)
        return 2
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"MRI Foundry QC dashboard: http://{shown}:{args.port}/" + ("  (token required)" if token else ""))
    server.run()
    return 0
