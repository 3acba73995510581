"""`mrifoundry serve`: the scheduled and event-triggered deployments of one warehouse.

Refuses to start without PREFECT_API_URL: without it Prefect would start a temporary server whose
schedules and triggers vanish when this process exits.
"""

from __future__ import annotations

import argparse
import sys

START_SERVER = (
    "start a server first and point serve at it:\n"
    "  prefect server start            # in another terminal (or the `prefect` service of docker/compose.yaml)\n"
    "  export PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    v = subparsers.add_parser(
        "serve",
        help="serve one warehouse's nightly curation, triggered retraining and evaluation (needs a Prefect server)",
        description="Serve the deployments of one warehouse against the Prefect server at PREFECT_API_URL: "
        "nightly curate -> pretrain when a snapshot brings enough new volumes -> evaluate the new checkpoint. "
        "Several warehouses can be served by one server; their events never cross.",
    )
    v.add_argument("--source", required=True, help="folder the nightly curation reads (the PACS drop folder)")
    v.add_argument("--warehouse", required=True, help="warehouse directory (created if missing)")
    v.add_argument(
        "--labels",
        default=None,
        metavar="CSV",
        help="registry CSV (PatientID,lesion,enlarged_ventricles) re-read at every curate run; "
        "labels already in the manifest are used too",
    )
    v.add_argument("--cron", default="30 1 * * *", help="curation schedule, cron syntax (default: 01:30 every night)")
    v.add_argument("--timezone", default="Europe/Berlin", help="IANA time zone of the schedule (default Europe/Berlin)")
    v.add_argument(
        "--min-new-volumes",
        type=int,
        default=50,
        help="newly curated volumes a snapshot must bring to trigger pretraining (default 50)",
    )
    t = v.add_argument_group("retraining (each triggered pretrain run)")
    t.add_argument("--preset", default="tiny", help="model preset: tiny (CPU smoke test), small, base (default tiny)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps per retrain (default: the preset's)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the snapshot per retrain")
    t.add_argument(
        "--cooldown-steps",
        type=int,
        default=None,
        help="after each retrain, a linear lr cooldown of this many steps gives the checkpoint that is "
        "evaluated; the next retrain still continues from the main-phase checkpoint (default 0: no cooldown, "
        "the main-phase checkpoint is evaluated)",
    )
    t.add_argument(
        "--from-scratch",
        action="store_true",
        help="train every retrain anew instead of continuing from the warehouse's latest checkpoint of the preset",
    )
    v.add_argument(
        "--eval-preset",
        default=None,
        help="evaluation preset of each triggered evaluation: tiny, cpu, small (default: the evaluate flow's)",
    )
    v.set_defaults(handler=run)
    return v


def api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def plan_from_args(args: argparse.Namespace, warehouse_id: str):
    from flows.deployments import ServePlan

    for flag, value, low in (
        ("--steps", args.steps, 1),
        ("--epochs", args.epochs, 1e-9),
        ("--cooldown-steps", args.cooldown_steps, 0),
        ("--min-new-volumes", args.min_new_volumes, 1),
    ):
        if value is not None and value < low:
            raise ValueError(f"{flag} {value}: must be {'0 or more' if low == 0 else 'positive'}")
    pretrain = {
        "preset": args.preset,
        "steps": args.steps,
        "epochs": args.epochs,
        "cooldown_steps": args.cooldown_steps,
        "from_scratch": bool(args.from_scratch),  # default: continue from the latest checkpoint
    }
    return ServePlan(
        source=str(args.source),
        warehouse=str(args.warehouse),
        warehouse_id=warehouse_id,
        cron=args.cron,
        timezone=args.timezone,
        min_new_volumes=args.min_new_volumes,
        labels_csv=str(args.labels) if args.labels else None,
        pretrain=pretrain,
        evaluate={"preset": args.eval_preset},
    )


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    if not api_url():
        print(
            f"mrifoundry serve: PREFECT_API_URL is not set, so schedules and triggers would die with this "
            f"process.\n{START_SERVER}",
            file=sys.stderr,
        )
        return 2
    if args.labels and not Path(args.labels).is_file():
        print(f"mrifoundry serve: --labels {args.labels} is not a file; pass the registry CSV", file=sys.stderr)
        return 2
    from flows.deployments import deployment_names, serve
    from tasks.context import open_warehouse
    from warehouse.identity import ensure_warehouse_id

    ctx = open_warehouse(Path(args.warehouse))
    wid = ensure_warehouse_id(ctx.manifest)
    plan = replace(plan_from_args(args, wid), warehouse=str(ctx.root))
    names = deployment_names(wid)
    print(f"warehouse {wid} at {ctx.root}: serving {', '.join(names.values())}", file=sys.stderr)
    print(f"run one by hand: prefect deployment run '{names['curate']}'", file=sys.stderr)
    serve(plan)
    return 0
