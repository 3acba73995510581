"""A retrained checkpoint beside its parent on the same cohort and splits: a verdict in words, never a crash."""

from __future__ import annotations

import re

import pytest

from tasks.parent_compare import METHOD, _verdict, compare_with_parent, previous_model
from tasks.train import pretrain
from tests.tasks.snapshot_fixture import small_warehouse
from warehouse.lineage import checkpoint_row


@pytest.fixture(scope="module")
def lineage_pair(tmp_path_factory):
    ctx = small_warehouse(tmp_path_factory.mktemp("wh"), n=16)
    first = pretrain(ctx, "tiny", steps=2)
    ids = [r["volume_id"] for r in ctx.manifest.query("SELECT volume_id FROM volumes")]
    snap2, _ = ctx.manifest.commit_snapshot(ids[:-1])
    warm = pretrain(ctx, "tiny", snapshot_id=snap2, steps=2, from_scratch=False)
    return ctx, first, warm


def test_new_checkpoint_is_compared_with_its_parent_per_task(lineage_pair):
    ctx, first, warm = lineage_pair
    out = compare_with_parent(ctx, warm.checkpoint_id)
    assert out.parent_checkpoint_id == first.checkpoint_id
    assert out.words[0].startswith(f"against {first.checkpoint_id}, the model it builds on")
    assert {r["task"] for r in out.rows} >= {"lesion", "enlarged_ventricles"}
    for line in out.words[1:]:
        assert re.match(r"- \w+: (better|worse|not better|not compared \(.+\))", line), line
    for r in out.rows:
        if r["value"] is not None:
            assert r["ci_low"] is None or r["ci_low"] <= r["value"] <= r["ci_high"]
    stored = ctx.manifest.query("SELECT task FROM evaluations WHERE encoder = ?", [METHOD])
    assert sorted(s["task"] for s in stored) == sorted(r["task"] for r in out.rows)


def test_a_scratch_checkpoint_has_nothing_to_compare_with(lineage_pair):
    ctx, first, warm = lineage_pair
    out = compare_with_parent(ctx, first.checkpoint_id)
    assert out.parent_checkpoint_id is None and out.rows == []
    assert "trained from scratch" in out.words[0]
    # A cooled-down checkpoint is compared with the previous retrain's model, not the main one it cooled.
    cool = pretrain(ctx, "tiny", snapshot_id=warm.snapshot_id, steps=1, phase="cooldown", init_from=warm.checkpoint_id)
    assert previous_model(ctx.manifest, checkpoint_row(ctx.manifest, cool.checkpoint_id))["checkpoint_id"] == (
        first.checkpoint_id
    )


def test_better_only_when_the_interval_is_above_zero():
    assert _verdict("auroc", 0.1, (0.02, 0.2), None).startswith("better")
    assert _verdict("auroc", -0.1, (-0.2, -0.01), None).startswith("worse")
    assert _verdict("auroc", 0.1, (-0.05, 0.2), None).startswith("not better")
    assert _verdict("auroc", None, None, "2 test subjects").startswith("not compared (2 test subjects")
