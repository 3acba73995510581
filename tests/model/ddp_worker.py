"""The process body of the data-parallel test, in a module light enough to import fast in a fresh process.

torch.multiprocessing.spawn imports the module of the function it runs in every child; this one pulls in
torch and the training loop but not MONAI (seconds of import time per process on a loaded machine).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from model.distributed import World, init_distributed, shutdown
from model.presets import get_preset
from model.train import train

META = {"snapshot_id": "snap-ddp", "code_version": "test"}
TINY = get_preset("tiny").model
STEPS = 2  # step 2 already runs on the weights and routing biases step 1 left on each rank


def recipe(batch_size: int):
    return dataclasses.replace(get_preset("tiny").train, steps=STEPS, batch_size=batch_size, checkpoint_every=100)


def run_rank(rank: int, world_size: int, port: int, items: list[dict[str, torch.Tensor]], out_dir: str) -> None:
    """One torchrun-style process: environment -> init_distributed -> train -> its loss history on disk."""
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    world = init_distributed()
    try:
        if world != World(rank=rank, world_size=world_size, local_rank=rank):
            raise AssertionError(f"init_distributed() returned {world} on rank {rank} of {world_size}")
        result = train(TINY, recipe(1), items, Path(out_dir), metadata=META, progress=False)
        torch.save(list(result.losses), Path(out_dir) / f"losses{rank}.pt")
    finally:
        shutdown()
