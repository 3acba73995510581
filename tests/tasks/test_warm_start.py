"""Retraining builds on the last model: warm start on a new snapshot, lineage, `from_scratch`, cooldown parent."""

from __future__ import annotations

import pytest
import torch

from tasks.train import pretrain
from tests.tasks.snapshot_fixture import small_warehouse
from warehouse.lineage import lineage


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Scratch on snapshot 1; then a new snapshot (two more volumes) retrained warm and from scratch."""
    ctx = small_warehouse(tmp_path_factory.mktemp("wh"), n=6)
    first = pretrain(ctx, "tiny", steps=2)
    snap1 = first.snapshot_id
    members = [r["volume_id"] for r in ctx.manifest.query("SELECT volume_id FROM volumes")]
    snap2, created = ctx.manifest.commit_snapshot(members[:4])  # a different member set: a new snapshot
    assert created and snap2 != snap1
    warm = pretrain(ctx, "tiny", snapshot_id=snap2, steps=2, from_scratch=False)
    scratch = pretrain(ctx, "tiny", snapshot_id=snap2, steps=2, from_scratch=True)
    cool = pretrain(ctx, "tiny", snapshot_id=snap2, steps=1, phase="cooldown", init_from=warm.checkpoint_id)
    return ctx, first, warm, scratch, cool, (snap1, snap2)


def test_warm_start_continues_from_the_latest_checkpoint_with_a_fresh_warmup(runs):
    ctx, first, warm, scratch, _, (snap1, snap2) = runs
    assert warm.parent_checkpoint_id == first.checkpoint_id
    assert warm.snapshots_seen == (snap1, snap2)
    assert warm.checkpoint_id not in (first.checkpoint_id, scratch.checkpoint_id)
    assert warm.checkpoint_path.parent != scratch.checkpoint_path.parent  # its own directory
    state = torch.load(warm.checkpoint_path, map_location="cpu", weights_only=False)
    assert state["init"]["path"] == str(first.checkpoint_path.resolve())  # model, EMA, biases, AdamW from it
    assert state["step"] == 2  # counted from 0 again: the lr schedule (warmup) restarted
    assert state["metadata"]["parent_checkpoint_id"] == first.checkpoint_id
    parent = torch.load(first.checkpoint_path, map_location="cpu", weights_only=False)
    scratch_state = torch.load(scratch.checkpoint_path, map_location="cpu", weights_only=False)
    # AdamW moments carried over: the warm run's step count continues the parent's, the scratch run's does not.
    first_param = next(iter(state["optimizer"]["state"]))
    assert (
        float(state["optimizer"]["state"][first_param]["step"])
        == float(parent["optimizer"]["state"][first_param]["step"]) + 2
    )
    assert float(scratch_state["optimizer"]["state"][first_param]["step"]) == 2


def test_from_scratch_and_lineage_rows(runs):
    ctx, first, warm, scratch, cool, (snap1, snap2) = runs
    assert scratch.parent_checkpoint_id is None and scratch.snapshots_seen == (snap2,)
    assert cool.parent_checkpoint_id == warm.checkpoint_id and cool.phase == "cooldown"
    chain = lineage(ctx.manifest, cool.checkpoint_id)
    assert [r["checkpoint_id"] for r in chain] == [cool.checkpoint_id, warm.checkpoint_id, first.checkpoint_id]
    assert list(chain[0]["snapshots_seen"]) == [snap1, snap2]
    assert chain[-1]["parent_checkpoint_id"] is None


def test_minvio_maxvio_reach_the_outcome(runs):
    _, first, *_ = runs
    assert first.minvio is not None and first.maxvio is not None and first.maxvio >= first.minvio


def test_the_pretraining_curve_runs_through_warm_start_and_cooldown(runs):
    _, first, warm, scratch, cool, _ = runs
    h = torch.load(cool.checkpoint_path, map_location="cpu", weights_only=True)["history"]
    assert h["step"] == [1, 2, 3, 4, 5] and h["loss"] == [*first.losses, *warm.losses, *cool.losses]
    assert [(p["phase"], p["start"]) for p in h["phases"]] == [("main", 0), ("main", 2), ("cooldown", 4)]
    assert h["maxvio"][-1] == cool.maxvio and h["minvio"][-1] == cool.minvio
    assert torch.load(scratch.checkpoint_path, map_location="cpu", weights_only=True)["history"]["step"] == [1, 2]
