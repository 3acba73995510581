"""`mrifoundry` command line: one subcommand per flow, plus status.

Prefect, torch and the imaging stack are imported inside the subcommands so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from flows import cli_classify, cli_dashboard, cli_model

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


def _fmt_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "  (none)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = "  " + "  ".join(c.ljust(widths[c]) for c in cols)
    body = ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([line, *body])


def print_status(warehouse: Path, as_json: bool) -> int:
    from warehouse.manifest import Manifest
    from warehouse.queries import status

    st = status(Manifest(warehouse))
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
        print(f"{title}:\n{_fmt_rows(st[key])}\n")
    ck = st["latest_checkpoint"]
    print(
        "Latest checkpoint:",
        "(none)"
        if ck is None
        else f"{ck['checkpoint_id']} {ck['path']} "
        f"(preset {ck['preset']}, {ck['steps']} steps, loss {ck['final_loss']:.4f}, snapshot {ck['snapshot_id']})",
    )
    print(f"Shards: {st['shards']}")
    return 0


def print_demo_summary(result: dict[str, Any], seconds: float) -> None:
    cur, pre, ev = result["curate"], result["pretrain"], result["evaluate"]
    wh = Path(cur["warehouse"])
    print("\n" + "=" * 72)
    print(f"MRI Foundry demo finished in {seconds / 60:.1f} min")
    print(f"  manifest:   {wh / 'manifest.duckdb'}")
    print(f"  shards:     {wh / 'shards'} (snapshot {cur['snapshot_id']}, {cur['snapshot_volumes']} volumes)")
    print(f"  checkpoint: {pre['checkpoint_path']}")
    print(f"  report:     {ev['report']}")
    print(f"Series found per class: {cur['series_by_class']}")
    print(f"Series rejected: {cur['rejections']}; skipped files: {cur['rejected_files']}")
    kept = {}
    for label, decision, n in cur["volumes_by_decision"]:
        kept.setdefault(label, {})[decision] = n
    print(f"Volumes by class and QC decision: {kept}")
    if cur["qc_reasons"]:
        print(f"QC reasons: {cur['qc_reasons']}")
    print(
        f"Pretraining ({pre['preset']}): {pre['steps']} steps, loss {pre['first_loss']:.4f} -> {pre['final_loss']:.4f}"
    )
    for s in ev["scores"]:
        print(
            f"Probe {s['task']:<20} {s['encoder']:<12} AUROC {s['auroc']:.3f} "
            f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}] ({s['n_subjects']} subjects)"
        )
    print("=" * 72)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrifoundry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="generate a synthetic hospital export and run the whole DAG on it")
    d.add_argument(
        "--out",
        type=Path,
        default=Path("var/demo"),
        help="output directory (default var/demo); the warehouse is OUT/warehouse",
    )
    d.add_argument("--synth-preset", default="demo", help="size of the synthetic export: tiny, demo, large")
    d.add_argument("--preset", default="tiny", help="model preset for pretraining (default tiny: CPU, minutes)")
    d.add_argument("--steps", type=int, default=None, help="override the preset's number of training steps")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic export")

    c = sub.add_parser("curate", help="ingest a DICOM folder: classify, convert, register, skull-strip, QC, shard")
    c.add_argument("source", type=Path, help="folder with the DICOM export (any layout, .dcm or .dcm.gz)")
    c.add_argument("--warehouse", type=Path, required=True, help="warehouse directory (created if missing)")
    c.add_argument("--labels", type=Path, default=None, help="CSV PatientID,lesion,enlarged_ventricles (optional)")
    c.add_argument(
        "--skullstrip",
        default="auto",
        choices=("auto", "deepbet", "synthstrip-docker"),
        help="skull-strip backend (auto: synthstrip-docker when a Docker engine answers, else deepbet)",
    )

    t = sub.add_parser("pretrain", help="pretrain the JEPA-MoE model on the latest snapshot")
    t.add_argument("--warehouse", type=Path, required=True)
    t.add_argument("--preset", default="tiny", help="model preset: tiny (CPU), small, base")
    t.add_argument("--snapshot", default=None, help="snapshot id (default: the latest)")
    t.add_argument("--steps", type=int, default=None, help="override the preset's number of training steps")

    e = sub.add_parser("evaluate", help="probe the latest checkpoint on the labels vs a random encoder")
    e.add_argument("--warehouse", type=Path, required=True)
    e.add_argument("--checkpoint", default=None, help="checkpoint id (default: the latest)")

    s = sub.add_parser("status", help="series by state and reason, volumes by class and QC decision, runs")
    s.add_argument("--warehouse", type=Path, required=True)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    cli_classify.add_parser(sub)
    cli_model.add_parser(sub)
    cli_dashboard.add_parser(sub)

    v = sub.add_parser("serve", help="serve the scheduled/triggered deployments (needs `prefect server start`)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Hospital networks: no telemetry calls home from the ephemeral Prefect server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        return _run(args)
    except (LookupError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"mrifoundry {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "dashboard":
        return cli_dashboard.run(args)
    if args.command == "classify":
        return cli_classify.run(args)
    if args.command == cli_model.COMMAND:
        return cli_model.run(args)
    if args.command == "status":
        return print_status(args.warehouse, args.json)
    if args.command == "curate" and not args.source.is_dir():
        raise FileNotFoundError(f"source {args.source} is not a directory; point it at a DICOM export folder")
    t0 = time.perf_counter()
    if args.command == "serve":
        from flows.deployments import serve

        serve(
            args.source,
            args.warehouse,
            cron=args.cron,
            timezone=args.timezone,
            min_new_volumes=args.min_new_volumes,
        )
        return 0
    if args.command == "demo":
        from flows.pipeline import demo_flow

        result = demo_flow(
            out=str(args.out),
            synth_preset=args.synth_preset,
            preset=args.preset,
            steps=args.steps,
            seed=args.seed,
        )
        print_demo_summary(result, time.perf_counter() - t0)
    elif args.command == "curate":
        from flows.curate import curate_flow

        result = curate_flow(
            str(args.source),
            str(args.warehouse),
            skullstrip=args.skullstrip,
            labels_csv=str(args.labels) if args.labels else None,
        )
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "pretrain":
        from flows.pretrain import pretrain_flow

        result = pretrain_flow(str(args.warehouse), preset=args.preset, snapshot_id=args.snapshot, steps=args.steps)
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}, indent=2, default=str))
    elif args.command == "evaluate":
        from flows.evaluate import evaluate_flow

        result = evaluate_flow(str(args.warehouse), checkpoint_id=args.checkpoint)
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
