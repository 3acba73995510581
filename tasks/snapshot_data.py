"""A snapshot as a map-style dataset: one memory-mapped shard read per item, never the whole snapshot.

Training and evaluation both read volumes through `SnapshotVolumes`: item i is member i of the
snapshot (ordered by volume id), read from its Arrow shard (memory-mapped, so only that volume's
pages are touched), fitted to the model grid and percentile-scaled to [0, 1] in the loader worker.
Nothing else is random or heavy here: augmentation runs batched on the training device.

Memory does not grow with the snapshot: the member list is one Arrow table (~70 bytes a volume,
shared untouched by forked DataLoader workers), and each process keeps at most `MAX_OPEN_SHARDS`
shard readers open (a 1.5 M-volume snapshot spans ~6000 shards, more than a process may hold open).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from model.data import prepare_volume
from model.masks import foreground_patches
from tasks.context import WarehouseContext
from warehouse.shards import ShardReader
from warehouse.snapshots import snapshot_member_table

MAX_OPEN_SHARDS = 64
IMG_SIZE = (96, 108, 96)  # the model grid of every preset
PATCH = 12
FG_VOXEL_FRACTION = 0.1


class SnapshotVolumes(torch.utils.data.Dataset):
    """Members of a snapshot as {"volume_id": str, "image": [1, 96, 108, 96] float32 in [0, 1], "fg": [576] bool}.

    Args:
        ctx: the warehouse.
        snapshot_id: which snapshot.
        volume_ids: keep only these members (in snapshot order); None keeps all. Unknown ids are an error.
    """

    def __init__(self, ctx: WarehouseContext, snapshot_id: str, volume_ids: Sequence[str] | None = None) -> None:
        self.ctx = ctx
        self.snapshot_id = snapshot_id
        table = snapshot_member_table(ctx.manifest, snapshot_id)
        if volume_ids is not None:
            wanted = pa.array(sorted(set(volume_ids)), type=pa.string())
            table = table.filter(pc.is_in(table["volume_id"], value_set=wanted))
            if table.num_rows != len(wanted):
                missing = sorted(set(wanted.to_pylist()) - set(table["volume_id"].to_pylist()))
                raise LookupError(
                    f"volumes {missing[:5]}{'...' if len(missing) > 5 else ''} are not in snapshot {snapshot_id}; "
                    "pass ids from `SnapshotVolumes(ctx, snapshot_id).members`"
                )
        self.table = table  # volume_id, subject_id, label, shard_path, batch_index
        self._volume_ids = table["volume_id"].combine_chunks()
        self._shard_paths = table["shard_path"].combine_chunks()
        self._batch_index = table["batch_index"].to_numpy()
        self._readers: OrderedDict[str, ShardReader] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.table.num_rows

    @cached_property
    def members(self) -> list[dict]:
        """The snapshot rows as dicts (volume_id, subject_id, label, shard_path, batch_index), in item order.

        Built on first use: O(N) Python objects, fine for evaluation-sized subsets, avoid in training.
        """
        return self.table.to_pylist()

    def volume_id(self, i: int) -> str:
        return self._volume_ids[i].as_py()

    def read(self, i: int) -> np.ndarray:
        """The stored volume of item i as float16 [X, Y, Z] (a view of the memory-mapped shard)."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} is outside snapshot {self.snapshot_id} of {len(self)} volumes")
        return self._reader(self._shard_paths[i].as_py()).read(int(self._batch_index[i])).data

    def __getitem__(self, i: int) -> dict:
        image = prepare_volume(self.read(i), IMG_SIZE, name=self.volume_id(i))  # [1, X, Y, Z]
        fg = foreground_patches(image[None], PATCH, FG_VOXEL_FRACTION)[0]  # [N]
        return {"volume_id": self.volume_id(i), "image": image, "fg": fg}

    def _reader(self, rel_path: str) -> ShardReader:
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own maps
            self._readers, self._pid = OrderedDict(), os.getpid()
        reader = self._readers.pop(rel_path, None)
        if reader is None:
            reader = ShardReader(self.ctx.abs(rel_path))
            if len(self._readers) >= MAX_OPEN_SHARDS:
                self._readers.popitem(last=False)
        self._readers[rel_path] = reader  # most recently used last
        return reader

    def __getstate__(self) -> dict:
        """Pickled into spawned workers without open memory maps (they reopen on first read)."""
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        state.pop("members", None)
        return state
