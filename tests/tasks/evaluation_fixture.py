"""A tiny benchmark cohort with a 2-step checkpoint, shared by the evaluation tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from synth.cohort import CohortConfig
from tasks.bench_corpus import write_bench_corpus
from tasks.context import WarehouseContext, open_warehouse
from warehouse.manifest import now
from warehouse.queries import snapshot_members
from warehouse.shards import ShardReader


def tiny_checkpoint(ctx: WarehouseContext, snapshot_id: str, steps: int = 2) -> str:
    """Train the tiny preset for a couple of steps on a snapshot and record the checkpoint row."""
    from model.data import VolumeDataset
    from model.presets import get_preset
    from model.train import train

    members = snapshot_members(ctx.manifest, snapshot_id)[:6]
    arrays = [ShardReader(ctx.abs(r["shard_path"])).read(r["batch_index"]).data.astype(np.float32) for r in members]
    model_cfg, train_cfg = get_preset("tiny")
    train_cfg = replace(train_cfg, steps=steps, warmup_steps=1, cooldown_steps=1, checkpoint_every=steps)
    torch.set_num_threads(2)
    res = train(
        model_cfg,
        train_cfg,
        VolumeDataset(arrays, train=False, seed=0),
        ctx.checkpoints_dir / "tiny",
        metadata={"snapshot_id": snapshot_id},
        progress=False,
    )
    ck = "ckpt-test"
    ctx.manifest.upsert(
        "checkpoints",
        [
            {
                "checkpoint_id": ck,
                "run_id": ctx.run_id,
                "snapshot_id": snapshot_id,
                "preset": "tiny",
                "path": ctx.rel(Path(res.checkpoint_path)),
                "steps": res.steps,
                "final_loss": float(res.final_loss),
                "code_version": "test",
                "created_at": now(),
            }
        ],
    )
    return ck


def tiny_cohort(
    root: Path, n_subjects: int = 20, seed: int = 0, contrasts: tuple[str, ...] = ("T1w", "FLAIR")
) -> WarehouseContext:
    """Two contrasts (enough for fusion and modality tasks) keep the feature pass short."""
    ctx = open_warehouse(root, run_id="run-eval-test")
    cfg = CohortConfig(n_subjects=n_subjects, seed=seed, pool_fraction=0.25, contrasts=contrasts)
    out = write_bench_corpus(ctx, cfg, workers=1)
    tiny_checkpoint(ctx, out.pool_snapshot_id)
    return ctx
