"""SnapshotVolumes: one shard read per item, the prepared image and foreground map, bounded open shards."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from model.data import VolumeDataset, blob_volume
from tasks import snapshot_data
from tasks.snapshot_data import SnapshotVolumes
from tests.tasks.snapshot_fixture import small_warehouse
from warehouse.queries import latest_snapshot


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return small_warehouse(tmp_path_factory.mktemp("wh"), n=6, shard_size=4, lesions=False)


def test_items_equal_the_in_memory_preparation_of_the_stored_volume(ctx):
    ds = SnapshotVolumes(ctx, latest_snapshot(ctx.manifest))
    assert len(ds) == 6 and [m["volume_id"] for m in ds.members] == [f"vol-{i}" for i in range(6)]
    assert {m["shard_path"] for m in ds.members} == {m["shard_path"] for m in ds.members[:1] + ds.members[4:5]}
    item = ds[5]
    reference = VolumeDataset([blob_volume(5).astype(np.float16)], train=False, seed=0)[0]
    assert item["volume_id"] == "vol-5"
    assert item["image"].shape == (1, 96, 108, 96) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"], reference["image"]) and torch.equal(item["fg"], reference["fg"])
    assert item["image"].min() >= 0.0 and item["image"].max() == 1.0 and item["fg"].shape == (576,)


def test_volume_subset_keeps_snapshot_order_and_rejects_strangers(ctx):
    snap = latest_snapshot(ctx.manifest)
    ds = SnapshotVolumes(ctx, snap, volume_ids=["vol-4", "vol-1"])
    assert [m["volume_id"] for m in ds.members] == ["vol-1", "vol-4"] and ds[1]["volume_id"] == "vol-4"
    with pytest.raises(LookupError, match="vol-9"):
        SnapshotVolumes(ctx, snap, volume_ids=["vol-1", "vol-9"])
    with pytest.raises(LookupError, match="not found"):
        SnapshotVolumes(ctx, "snap-missing")


def test_open_shards_are_bounded_and_survive_pickling(ctx, monkeypatch):
    monkeypatch.setattr(snapshot_data, "MAX_OPEN_SHARDS", 1)
    ds = SnapshotVolumes(ctx, latest_snapshot(ctx.manifest))
    first, last = ds[0]["image"], ds[5]["image"]
    assert len(ds._readers) == 1  # the second shard evicted the first
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert clone._readers == {} and torch.equal(clone[0]["image"], first) and torch.equal(clone[5]["image"], last)
