"""`mrifoundry serve`: the scheduled and event-triggered deployments of one warehouse."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    v = subparsers.add_parser("serve", help="serve the scheduled/triggered deployments (needs `prefect server start`)")
    v.add_argument("--source", required=True, help="folder the nightly curation reads (the PACS drop folder)")
    v.add_argument("--warehouse", required=True)
    v.add_argument("--cron", default="30 1 * * *", help="curation schedule (default 01:30 every night)")
    v.add_argument("--timezone", default="Europe/Berlin", help="time zone of the schedule")
    v.add_argument(
        "--min-new-volumes",
        type=int,
        default=50,
        help="new curated volumes needed before a snapshot triggers pretraining",
    )
    v.set_defaults(handler=run)
    return v


def run(args: argparse.Namespace) -> int:
    from flows.deployments import serve

    serve(
        args.source,
        args.warehouse,
        cron=args.cron,
        timezone=args.timezone,
        min_new_volumes=args.min_new_volumes,
    )
    return 0
