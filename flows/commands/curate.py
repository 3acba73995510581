"""`mrifoundry curate`: one DICOM export (or BIDS dataset) through ingest → QC → shards → snapshot, on Dask.

A source with nothing to read (no DICOM series, NIfTI without a BIDS layout, no files) is an error with
one line saying why (exit 2, from `flows.cli.main`), never an empty success."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.commands.common import print_json

EXIT_BUSY = 3
"""Exit code of `curate --no-wait` when another curation holds the warehouse."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "curate", help="ingest a DICOM folder: classify, convert, register, skull-strip, QC, shard (on Dask)"
    )
    c.add_argument(
        "source",
        type=Path,
        help="folder with the DICOM export (any layout, .dcm or .dcm.gz) or a BIDS dataset (anat T1w/T2w/FLAIR)",
    )
    c.add_argument("--warehouse", type=Path, required=True, help="warehouse directory (created if missing)")
    c.add_argument("--labels", type=Path, default=None, help="CSV PatientID,lesion,enlarged_ventricles (optional)")
    c.add_argument(
        "--skullstrip",
        default="auto",
        choices=("auto", "deepbet", "synthstrip-docker"),
        help="skull-strip backend (auto: synthstrip-docker when a Docker engine answers, else deepbet)",
    )
    c.add_argument(
        "--dask-address",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run the per-series work on an existing Dask cluster (`dask scheduler` + `dask worker`; the "
        "source and warehouse must be on a filesystem every worker mounts at the same path). Default: a "
        "local cluster with one worker per core (or MRIFOUNDRY_DASK_ADDRESS)",
    )
    c.add_argument("--workers", type=int, default=None, help="workers of the local cluster (default: one per core)")
    c.add_argument(
        "--no-wait",
        action="store_true",
        help=f"if another curate is writing to this warehouse, exit with code {EXIT_BUSY} instead of waiting",
    )
    c.set_defaults(handler=run)
    return c


def run(args: argparse.Namespace) -> int:
    if not args.source.is_dir():
        raise FileNotFoundError(f"source {args.source} is not a directory; point it at a DICOM export folder")
    from imaging.bids import NoInputError, quick_input_problem

    problem = quick_input_problem(args.source)  # file names alone say there is nothing: no flow, no cluster
    if problem:
        raise NoInputError(problem)
    if args.dask_address and args.workers is not None:
        raise ValueError("--workers sizes the local cluster; with --dask-address start `dask worker`s instead")
    if args.dask_address and not _reachable_api(args.dask_address):
        raise ValueError(
            f"--dask-address {args.dask_address}: workers on other machines cannot reach this command's temporary "
            "Prefect server; start `prefect server start --host 0.0.0.0` and set "
            "PREFECT_API_URL=http://HOST:4200/api here and on every worker"
        )
    from flows.curate import curate_flow, dask_runner
    from tasks.writer_lock import WarehouseBusyError

    flow = curate_flow.with_options(task_runner=dask_runner(args.dask_address, args.workers))
    try:
        result = flow(
            str(args.source),
            str(args.warehouse),
            skullstrip=args.skullstrip,
            labels_csv=str(args.labels) if args.labels else None,
            wait_for_lock=not args.no_wait,
        )
    except WarehouseBusyError as err:
        print(f"mrifoundry curate: {err}", file=sys.stderr)
        return EXIT_BUSY
    print_json(result)
    return 0


def _reachable_api(address: str) -> bool:
    """True when the cluster's workers can report task runs: a Prefect server is configured, or the
    scheduler is on this machine (the temporary server listens on 127.0.0.1 only)."""
    import socket
    from urllib.parse import urlparse

    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # from the environment or the active Prefect profile
        return True
    host = urlparse(address if "://" in address else f"tcp://{address}").hostname or ""
    return host in {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
