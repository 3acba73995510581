"""Minimal stand-in for `tasks.snapshot_data.SnapshotVolumes` (same interface), used only when it is absent.

Reads one volume per item from its memory-mapped shard and scales the 0.5-99.5 percentiles to
[0, 1], so evaluation never holds a snapshot in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.masks import foreground_patches
from tasks.context import WarehouseContext
from warehouse.queries import snapshot_members
from warehouse.shards import ShardReader


class SnapshotVolumes(torch.utils.data.Dataset):
    def __init__(self, ctx: WarehouseContext, snapshot_id: str, volume_ids: Sequence[str] | None = None) -> None:
        self.ctx = ctx
        rows = snapshot_members(ctx.manifest, snapshot_id)
        if volume_ids is not None:
            wanted = set(volume_ids)
            rows = [r for r in rows if r["volume_id"] in wanted]
            if len(rows) != len(wanted):
                raise LookupError(f"some of {len(wanted)} volumes are not in snapshot {snapshot_id}")
        self.members = rows
        self._readers: dict[str, ShardReader] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> dict:
        r = self.members[i]
        reader = self._readers.setdefault(r["shard_path"], ShardReader(self.ctx.abs(r["shard_path"])))
        a = reader.read(r["batch_index"]).data.astype(np.float32)
        lo, hi = np.percentile(a, (0.5, 99.5))
        img = torch.from_numpy(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1))[None]  # [1, X, Y, Z]
        return {"volume_id": r["volume_id"], "image": img, "fg": foreground_patches(img[None], 12, 0.1)[0]}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": {}}
