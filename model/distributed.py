"""Data-parallel training across processes: torchrun-compatible setup, the DDP wrapper, reductions.

How a run is split: every process builds the same model (same seed; DDP also broadcasts rank 0's
weights), reads its own slice of each global batch (`train.StepBatches` with rank and world size:
rank r takes samples r*B .. r*B+B-1 of the global batch of world_size*B), and DDP averages the
gradients, so one step equals a single-process step on the whole global batch. What DDP does not
synchronise is handled explicitly, once per step:
    - MoE routing counts are summed across ranks before the bias update (`moe.update_moe_biases`),
      so every rank applies the identical bias change;
    - the logged loss and statistics are averaged across ranks (`all_reduce_mean`), so every rank
      takes the same skip decision for a non-finite step and records the same loss history.
Buffers are broadcast from rank 0 once, when DDP wraps the model (zero counts, the same routing bias),
but not before every forward (`forward_sync_buffers=False`): the per-step counts must stay rank-local
until they are summed, and the routing bias then stays identical on every rank by construction.

Launch: `mrifoundry pretrain --warehouse W --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT]`
(which starts tasks/pretrain_worker.py under torchrun), or call `init_distributed()` at the top of any
script started by torchrun; `train()` picks the process group up by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, calls the log callback and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_world() -> World:
    """The World of the initialised default process group, or a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(backend: str | None = None) -> World:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Args:
        backend: "nccl" or "gloo"; default nccl when CUDA is available, else gloo (CPU runs and tests).

    Returns:
        This process's World. Without torchrun's variables (a plain `python` start) it returns a
        single-process World and initialises nothing, so the same script runs both ways.
    """
    if "WORLD_SIZE" not in os.environ:
        return World()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is set but {missing} are not: start the job with torchrun (or set all of RANK, "
            "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://")
    return current_world()


def shutdown() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(world: World, name: str) -> torch.device:
    """The device of this process: `name` ("auto", "cpu", "cuda", "cuda:1", ...); auto and bare "cuda"
    map to this process's local GPU, so N processes on one machine use N different GPUs."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` on `device` (gradients averaged across ranks).

    `forward_sync_buffers=False`: see the module docstring (MoE counts are rank-local until summed).
    Every trainable parameter receives a gradient every step (the grouped experts are one tensor,
    and all mask tokens are used), so unused-parameter detection is off.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def all_reduce_mean(x: torch.Tensor, world: World) -> torch.Tensor:
    """Mean of `x` over ranks (a new tensor; `x` itself when single-process)."""
    if not world.distributed:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world.world_size


def barrier(world: World) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will report)."""
    if world.distributed:
        dist.barrier()
