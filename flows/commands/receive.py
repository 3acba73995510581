"""`mrifoundry receive`: a DICOM node the PACS pushes MR studies to, filing them into a drop folder.

Thin CLI wiring around `imaging.dicom.receiver`; no Prefect. Point `curate` (or `serve --source`)
at the drop folder: it reads only the studies the receiver has marked READY.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

HELP = "DICOM Storage SCP: accept C-ECHO/C-STORE of MR images from a PACS into a drop folder"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `receive` subcommand on the main parser's subparsers."""
    p = subparsers.add_parser(
        "receive",
        help=HELP,
        description=(
            "Listen for DICOM associations and store MR images (MR, Enhanced MR, Legacy Converted "
            "Enhanced MR; any transfer syntax) pushed with C-STORE. Each instance is written atomically "
            "to DROP/study-<hash>/series-<hash>/<hash>.dcm (no patient names or IDs in paths); a study "
            "gets a READY marker after --quiet-seconds without new instances, and curate reads only "
            "ready studies. Stop with Ctrl-C."
        ),
    )
    p.add_argument("--ae-title", required=True, help="this node's AE title (what the PACS calls)")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on (e.g. 11112)")
    p.add_argument("--drop", type=Path, required=True, help="drop folder the studies are written to")
    p.add_argument(
        "--allow-ae",
        action="append",
        default=[],
        metavar="TITLE",
        help="calling AE title allowed to send (repeatable); without it any caller is accepted",
    )
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=120.0,
        help="seconds without a new instance before a study is marked ready (default 120)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the receiver until interrupted; 2 with a message on stderr for a bad option."""
    from imaging.dicom.receiver import Receiver, ReceiverConfig, allowed, quiet_pynetdicom_logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_pynetdicom_logs()
    config = ReceiverConfig(
        ae_title=args.ae_title,
        port=args.port,
        drop=args.drop,
        allowed_calling_aes=allowed(args.allow_ae),
        quiet_seconds=args.quiet_seconds,
        host=args.host,
    )
    receiver = Receiver(config)
    try:
        host, port = receiver.start()
    except OSError as err:
        print(f"mrifoundry receive: error: cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 2
    who = ", ".join(config.allowed_calling_aes) or "any AE title"
    print(f"receiving as {config.ae_title} on {host}:{port} from {who}; drop folder {config.drop}", flush=True)
    # `docker stop` sends SIGTERM: leave through the same path as Ctrl-C, closing the listener.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        receiver.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    return 0
