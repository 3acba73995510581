"""`mrifoundry` command line: one table of subcommands, each a module in `flows/commands/`.

Prefect, torch and the imaging stack are imported inside the subcommands so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

DESCRIPTION = """\
MRI Foundry: turn raw brain-MRI DICOM exports into a curated, QC'd training corpus and pretrain a
JEPA-MoE foundation model on it. Every subcommand runs a Prefect flow (an ephemeral Prefect server
starts on demand unless PREFECT_API_URL points at a running `prefect server`).

A warehouse directory holds manifest.duckdb, shards/, checkpoints/, reports/ and the
pseudonymisation key deid.key (or set MRIFOUNDRY_DEID_KEY). Reruns are idempotent.
"""

EPILOG = """\
examples:
  mrifoundry demo                                   # synthetic export -> whole DAG in var/demo
  mrifoundry curate /pacs/export/2026-11-22 --warehouse /data/mri
  mrifoundry pretrain --warehouse /data/mri --preset tiny
  mrifoundry evaluate --warehouse /data/mri
  mrifoundry status --warehouse /data/mri --json
"""


COMMANDS: tuple[str, ...] = (
    "demo",
    "curate",
    "pretrain",
    "evaluate",
    "bench_corpus",
    "benchmark",
    "status",
    "failures",
    "export_bids",
    "classify",
    "receive",
    "review",
    "model_info",
    "dashboard",
    "serve",
)
"""Modules of `flows.commands`, in `--help` order; each has `add_parser(subparsers)` and `run(args)`."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrifoundry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"flows.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Hospital networks: no telemetry calls home from the ephemeral Prefect server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Our modules log progress (pretraining step and ETA, evaluation tasks, worker counts) at INFO; the
    # root logger Prefect configures shows WARNING and up, so without this a long run prints nothing.
    level = os.environ.get("MRIFOUNDRY_LOG_LEVEL", "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        print(f"mrifoundry: error: MRIFOUNDRY_LOG_LEVEL={level!r}; use DEBUG, INFO, WARNING or ERROR", file=sys.stderr)
        return 2
    logging.getLogger("mrifoundry").setLevel(level)
    try:
        return args.handler(args)
    except (LookupError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"mrifoundry {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
