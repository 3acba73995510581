"""torchrun entry point: data-parallel pretraining (main or cooldown phase) on volumes from .npy files.

    torchrun --nproc-per-node 8 -m model.train_ddp --preset base --volumes /data/npy --out runs/base
    torchrun --nproc-per-node 8 -m model.train_ddp --preset base --volumes /data/npy --out runs/base-cool \\
        --phase cooldown --init-from runs/base/last.pt
    torchrun --nproc-per-node 2 -m model.train_ddp --preset tiny --synthetic 8 --out /tmp/ddp   # CPU smoke run

Started with plain `python -m model.train_ddp` it runs as a single process. The model package never
reads the warehouse, so volumes come as a folder of .npy arrays (or synthetic blobs); the curated
pipeline's own entry (tasks/train.py) does the same once `distributed.init_distributed()` has run at
the top of the torchrun-started script. Every rank prints nothing but rank 0, which also writes the
checkpoint and the per-step log lines (JSON, every --log-every steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from model.data import VolumeDataset, blob_volume
from model.distributed import init_distributed, shutdown
from model.presets import PRESETS, get_preset
from model.train import cooldown, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="model.train_ddp", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--volumes", type=Path, help="folder of .npy volumes (X, Y, Z) on or near the model grid")
    src.add_argument("--synthetic", type=int, help="use N synthetic brain-like volumes (smoke runs)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory of this phase")
    ap.add_argument("--phase", choices=("main", "cooldown"), default="main")
    ap.add_argument("--init-from", type=Path, help="main-phase checkpoint a cooldown starts from")
    ap.add_argument("--steps", type=int, help="override the phase's steps (main: steps, cooldown: cooldown_steps)")
    ap.add_argument("--batch-size", type=int, help="override the per-process batch size")
    ap.add_argument("--num-workers", type=int, help="override DataLoader workers per process")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument("--log-every", type=int, default=10, help="print a JSON log line every N steps (rank 0)")
    args = ap.parse_args(argv)
    if args.phase == "cooldown" and args.init_from is None:
        ap.error("--phase cooldown needs --init-from (the main-phase last.pt to cool down)")
    return args


def load_volumes(args: argparse.Namespace) -> list[np.ndarray]:
    if args.synthetic is not None:
        return [blob_volume(seed) for seed in range(args.synthetic)]
    files = sorted(args.volumes.glob("*.npy"))
    if not files:
        raise SystemExit(f"no .npy files in {args.volumes}; export volumes as (X, Y, Z) float arrays first")
    return [np.load(f, mmap_mode="r") for f in files]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = init_distributed()
    try:
        model_cfg, train_cfg = get_preset(args.preset)
        overrides = {"compile": args.compile or train_cfg.compile}
        if args.steps is not None:
            overrides["steps" if args.phase == "main" else "cooldown_steps"] = args.steps
        if args.batch_size is not None:
            overrides["batch_size"] = args.batch_size
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers
        train_cfg = dataclasses.replace(train_cfg, **overrides)
        dataset = VolumeDataset(load_volumes(args), train=True, seed=train_cfg.seed)
        metadata = {"preset": args.preset, "world_size": world.world_size, "source": str(args.volumes or "synthetic")}

        def log(record: dict) -> None:
            if record["step"] % args.log_every == 0:
                print(json.dumps({k: round(v, 6) for k, v in record.items()}), flush=True)

        common = {"metadata": metadata, "log": log, "progress": sys.stderr.isatty()}
        if args.phase == "main":
            result = train(model_cfg, train_cfg, dataset, args.out, **common)
        else:
            result = cooldown(model_cfg, train_cfg, dataset, args.out, init_from=args.init_from, **common)
        if world.is_main:
            summary = {"phase": args.phase, "world_size": world.world_size, "steps": result.steps}
            summary |= {"final_loss": result.final_loss, "skipped_steps": result.skipped_steps}
            print(json.dumps(summary | {"checkpoint": str(result.checkpoint_path)}), flush=True)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
