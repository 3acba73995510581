"""The training stream: which item every sample of every step is, split by rank and by loader worker.

The stream is endless: position p of it is item `perm_e[p mod N]` of epoch e = p div N, where
perm_e is a permutation of the N items seeded by (seed, e). The global batch of step s is positions
s*W*B .. (s+1)*W*B - 1 (W ranks of B samples), and rank r holds the r-th slice of B. So a step's
samples are a pure function of (seed, N, W, B, s): no sampler state to save, and resuming needs only
the step, recorded in a checkpoint as (epoch, samples seen) of the snapshot it trained on.

Loader workers split the work by step: the DataLoader hands step `start + k` to worker k mod n_workers
(`worker_steps`), each worker builds whole batches, and batches come back in step order. Only one
permutation (N int64, 12 MiB for 1.5 M volumes) is held per process at a time (plus the next one at an
epoch boundary): nothing else grows with the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model.masks import derive_seed


@dataclass(frozen=True)
class StreamPosition:
    """Where a run is in its stream: what a checkpoint records to resume exactly."""

    n_items: int
    epoch: int  # epoch of the next sample
    samples_seen: int  # global samples consumed (all ranks), = step * world_size * batch_size

    def to_dict(self) -> dict[str, int]:
        return {"n_items": self.n_items, "epoch": self.epoch, "samples_seen": self.samples_seen}


class EpochStream:
    """Item index at each position of the endless stream over `n_items` items (a permutation per epoch)."""

    def __init__(self, n_items: int, seed: int, *, batch_size: int, world_size: int = 1) -> None:
        if n_items < 1:
            raise ValueError("the training dataset is empty; curate at least one volume first")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size={batch_size} and world_size={world_size} must be >= 1")
        self.n_items, self.seed = n_items, seed
        self.batch_size, self.world_size = batch_size, world_size
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def item(self, position: int) -> int:
        epoch, offset = divmod(position, self.n_items)
        return int(self._perm(epoch)[offset])

    def positions(self, step: int, rank: int) -> range:
        """Stream positions rank `rank` holds in step `step`."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank={rank} must be in 0..world_size-1={self.world_size - 1}")
        start = (step * self.world_size + rank) * self.batch_size
        return range(start, start + self.batch_size)

    def position_at(self, step: int) -> StreamPosition:
        seen = step * self.global_batch
        return StreamPosition(self.n_items, seen // self.n_items, seen)

    def step_at(self, pos: StreamPosition) -> int:
        """The step to continue from a recorded position; refuses a position of another stream."""
        if pos.n_items != self.n_items:
            raise ValueError(
                f"the checkpoint was trained on {pos.n_items} items and this dataset has {self.n_items}: it is a "
                "different snapshot; resume on the snapshot it was trained on or start a fresh out_dir"
            )
        step, rest = divmod(pos.samples_seen, self.global_batch)
        if rest:
            raise ValueError(
                f"samples_seen={pos.samples_seen} is not a whole number of global batches of {self.global_batch}; "
                "resume with the batch size and world size the run was started with"
            )
        return step

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # keep the current and the next epoch only
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n_items, generator=gen)
        return self._perms[epoch]


def worker_steps(start: int, stop: int, worker: int, num_workers: int) -> range:
    """Steps DataLoader worker `worker` of `num_workers` builds when the run goes from `start` to `stop`.

    This is the DataLoader's own round-robin over the step sampler (`range(start, stop)`), written out
    so tests can check that workers partition the steps and nothing is built twice.
    """
    if not 0 <= worker < max(num_workers, 1):
        raise ValueError(f"worker={worker} must be in 0..num_workers-1={num_workers - 1}")
    return range(start + worker, stop, max(num_workers, 1))


def steps_for_epochs(epochs: float, n_items: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps that cover `epochs` passes over `n_items` items with the global batch (rounded up)."""
    if epochs <= 0:
        raise ValueError(f"epochs={epochs} must be > 0")
    return max(1, math.ceil(epochs * n_items / (batch_size * world_size)))
