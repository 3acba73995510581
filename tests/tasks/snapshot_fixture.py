"""A small warehouse written straight into shards + manifest + snapshot (no DICOM, no curation).

Shared by the training and snapshot-dataset tests; blob volumes are ~25 ms each, so a few dozen are cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.context import WarehouseContext, open_warehouse
from warehouse.shards import ShardVolume, write_shard


def small_warehouse(root: Path, n: int = 8, shard_size: int = 4, lesions: bool = True) -> WarehouseContext:
    """`n` blob volumes in shards of `shard_size`, all passing QC, labelled, and one snapshot of them all."""
    from model.data import blob_volume

    ctx = open_warehouse(root, run_id="run-test")
    m = ctx.manifest
    vols = []
    for i in range(n):
        data = blob_volume(i)
        if lesions and i % 2:  # "lesion": a bright blob the probe can find
            data[40:52, 50:62, 40:52] = data.max() * 1.5
        mask = (data > 0).astype(np.uint8)
        vols.append(ShardVolume(f"vol-{i}", f"sub-{i}", "T1w", data.astype(np.float16), mask, (1.8,) * 3, np.eye(4)))
    for start in range(0, n, shard_size):
        chunk = vols[start : start + shard_size]
        info = write_shard(chunk, ctx.shards_dir)
        m.upsert("shards", [{"shard_id": info.shard_id, "path": ctx.rel(info.path), "n_volumes": len(chunk)}])
        m.upsert(
            "shard_volumes",
            [{"volume_id": v.volume_id, "shard_id": info.shard_id, "batch_index": i} for i, v in enumerate(chunk)],
        )
    m.upsert("volumes", [{"volume_id": v.volume_id, "subject_id": v.subject_id, "label": "T1w"} for v in vols])
    m.upsert("qc", [{"volume_id": v.volume_id, "decision": "pass"} for v in vols])
    m.upsert(
        "labels",
        [{"subject_id": f"sub-{i}", "lesion": i % 2, "enlarged_ventricles": int(i < n // 2)} for i in range(n)],
    )
    m.commit_snapshot([v.volume_id for v in vols])
    return ctx
