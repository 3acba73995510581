"""Pretraining over a manifest snapshot: shards -> MONAI dataset -> JEPA-MoE -> checkpoint row.

The checkpoint directory is keyed by preset and snapshot, and training resumes from `last.pt`, so a
killed pretraining run continues where it stopped and a finished one is not repeated.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks.context import WarehouseContext, code_version
from warehouse.manifest import now
from warehouse.queries import latest_snapshot, snapshot_members
from warehouse.shards import ShardReader

log = logging.getLogger("mrifoundry.train")


@dataclass(frozen=True)
class PretrainOutcome:
    checkpoint_id: str
    checkpoint_path: Path
    snapshot_id: str
    preset: str
    steps: int
    first_loss: float
    final_loss: float
    losses: tuple[float, ...]
    skipped_steps: int
    seconds: float
    n_volumes: int


def load_snapshot_arrays(
    ctx: WarehouseContext, snapshot_id: str, limit: int | None = None
) -> tuple[list[dict], list[np.ndarray]]:
    """Members of a snapshot (the first `limit` of them, if given) and their volumes as float32 arrays."""
    members = snapshot_members(ctx.manifest, snapshot_id)[:limit]
    readers: dict[str, ShardReader] = {}
    arrays = []
    for row in members:
        reader = readers.setdefault(row["shard_path"], ShardReader(ctx.abs(row["shard_path"])))
        arrays.append(reader.read(row["batch_index"]).data.astype(np.float32))
    return members, arrays


def resolve_snapshot(ctx: WarehouseContext, snapshot_id: str | None) -> str:
    snap = snapshot_id or latest_snapshot(ctx.manifest)
    if snap is None:
        raise LookupError(
            f"warehouse {ctx.root} has no snapshot yet: run `mrifoundry curate SOURCE --warehouse {ctx.root}` "
            "and make sure some volumes pass QC"
        )
    return snap


def pretrain(
    ctx: WarehouseContext, preset: str = "tiny", snapshot_id: str | None = None, steps: int | None = None
) -> PretrainOutcome:
    from model.data import VolumeDataset
    from model.presets import get_preset
    from model.train import train

    snap = resolve_snapshot(ctx, snapshot_id)
    members, arrays = load_snapshot_arrays(ctx, snap)
    model_cfg, train_cfg = get_preset(preset)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        train_cfg = replace(train_cfg, steps=steps)
    out_dir = ctx.checkpoints_dir / f"{preset}-{snap}"
    metadata = {
        "snapshot_id": snap,
        "code_version": code_version(),
        "preset": preset,
        "volume_ids": [m["volume_id"] for m in members],
        "run_id": ctx.run_id,
    }
    log.info("pretraining %s on snapshot %s (%d volumes, %d steps)", preset, snap, len(arrays), train_cfg.steps)
    dataset = VolumeDataset(arrays, train=True, seed=train_cfg.seed)
    result = train(model_cfg, train_cfg, dataset, out_dir, metadata=metadata, resume=True, progress=True)
    ck_id = "ckpt-" + hashlib.sha256(f"{preset}:{snap}:{result.steps}".encode()).hexdigest()[:16]
    ctx.manifest.upsert(
        "checkpoints",
        [
            {
                "checkpoint_id": ck_id,
                "run_id": ctx.run_id,
                "snapshot_id": snap,
                "preset": preset,
                "path": ctx.rel(Path(result.checkpoint_path)),
                "steps": result.steps,
                "final_loss": float(result.final_loss),
                "code_version": code_version(),
                "created_at": now(),
            }
        ],
    )
    losses = tuple(float(x) for x in result.losses)
    return PretrainOutcome(
        checkpoint_id=ck_id,
        checkpoint_path=Path(result.checkpoint_path),
        snapshot_id=snap,
        preset=preset,
        steps=result.steps,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=float(result.final_loss),
        losses=losses,
        skipped_steps=result.skipped_steps,
        seconds=result.seconds,
        n_volumes=len(arrays),
    )
