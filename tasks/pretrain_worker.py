"""The program torchrun starts in every training process: `python -m tasks.pretrain_worker --spec SPEC.json`.

`mrifoundry pretrain --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]` writes the spec (preset,
snapshot, phase, run directory) and starts `torch.distributed.run` with this module; nothing else
starts it. Each process joins the process group from torchrun's environment (gloo on CPU, NCCL on
GPUs), streams its slice of every batch from the snapshot's shards and trains; global rank 0 records
the checkpoint in the manifest and writes result.json for the launcher.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tasks.context import WarehouseContext
from tasks.train import TrainSpec, run_training


def main(argv: list[str] | None = None) -> int:
    from model.distributed import init_distributed, shutdown

    ap = argparse.ArgumentParser(prog="tasks.pretrain_worker", description=__doc__)
    ap.add_argument("--spec", type=Path, required=True, help="TrainSpec JSON written by `mrifoundry pretrain`")
    args = ap.parse_args(argv)
    spec = TrainSpec.from_json(args.spec.read_text())
    world = init_distributed()
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING, format="%(message)s")
    try:
        # Not open_warehouse(): that creates tables, and only the launching process may write the schema.
        ctx = WarehouseContext(root=Path(spec.warehouse), run_id=spec.run_id)
        out = run_training(ctx, spec)
        if world.is_main:
            print(f"rank 0: {out.phase} phase, {out.steps} steps on {world.world_size} processes, "
                  f"final loss {out.final_loss:.4f}", flush=True)  # fmt: skip
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
