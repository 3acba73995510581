"""`mrifoundry pretrain`: JEPA-MoE pretraining on a warehouse snapshot, one process or a torchrun DDP job."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands.common import print_json

EPILOG = """\
examples:
  mrifoundry pretrain --warehouse /data/mri --preset tiny --steps 50          # one process, CPU
  mrifoundry pretrain --warehouse /data/mri --preset base --epochs 200 --nproc-per-node 8
  mrifoundry pretrain --warehouse /data/mri --preset base --phase cooldown --from CKPT --epochs 40 \\
      --nproc-per-node 8
  # two machines, 8 GPUs each: run the same command on both (shared warehouse storage)
  mrifoundry pretrain --warehouse /shared/mri --preset base --epochs 200 --nproc-per-node 8 \\
      --nnodes 2 --rdzv-endpoint node1.hospital.lan:29400
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "pretrain",
        help="pretrain the JEPA-MoE model on the latest snapshot (DDP via torchrun with --nproc-per-node)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--warehouse", type=Path, required=True)
    t.add_argument("--preset", default="tiny", help="model preset: tiny (CPU), small, base")
    t.add_argument("--snapshot", default=None, help="snapshot id (default: the latest)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps of the phase (default: the preset's)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the snapshot instead of steps")
    t.add_argument("--phase", choices=("main", "cooldown"), default="main", help="main (default) or cooldown")
    t.add_argument("--from", dest="init_from", default=None, metavar="CKPT",
                   help="main-phase checkpoint (last.pt path or checkpoint id) the cooldown starts from")  # fmt: skip
    t.add_argument("--cooldown-steps", type=int, default=None, help="run a cooldown of N steps after the main phase")
    t.add_argument("--nproc-per-node", type=int, default=1, help="training processes on this machine (one per GPU)")
    t.add_argument("--nnodes", type=int, default=1, help="machines in the job (run the same command on each)")
    t.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="rendezvous of a multi-node job")
    t.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process (default: preset)")
    t.add_argument(
        "--warm-start",
        action="store_true",
        help="continue from the warehouse's latest main-phase checkpoint of --preset (what `serve`'s retrains do)",
    )
    t.set_defaults(handler=run)
    return t


def run(args: argparse.Namespace) -> int:
    from flows.pretrain import pretrain_flow

    if args.phase == "cooldown" and args.init_from is None:
        raise ValueError("--phase cooldown needs --from CHECKPOINT (the main-phase last.pt or its checkpoint id)")
    result = pretrain_flow(
        str(args.warehouse),
        preset=args.preset,
        snapshot_id=args.snapshot,
        steps=args.steps,
        epochs=args.epochs,
        phase=args.phase,
        init_from=args.init_from,
        cooldown_steps=args.cooldown_steps,
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        rdzv_endpoint=args.rdzv_endpoint,
        num_workers=args.num_workers,
        from_scratch=False if args.warm_start else None,
    )
    print_json({k: v for k, v in result.items() if k != "losses"})
    return 0
