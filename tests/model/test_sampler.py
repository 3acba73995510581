"""The training stream: epochs are permutations, ranks and loader workers split it, resume is exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.augment import AugmentConfig
from model.batches import StepBatches
from model.data import VolumeDataset
from model.masks import MaskCollator
from model.presets import get_preset
from model.sampler import EpochStream, StreamPosition, steps_for_epochs, worker_steps
from model.train import train
from tests.model import TINY, blob_volumes, single_thread


def test_every_epoch_is_a_permutation_and_epochs_differ():
    stream = EpochStream(7, seed=3, batch_size=2)
    epochs = [[stream.item(p) for p in range(e * 7, (e + 1) * 7)] for e in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert [EpochStream(7, seed=3, batch_size=5).item(p) for p in range(21)] == sum(epochs, [])  # any batch size


def test_ranks_partition_each_global_batch_in_order():
    one = EpochStream(10, seed=0, batch_size=6)
    three = EpochStream(10, seed=0, batch_size=2, world_size=3)
    for step in (0, 4, 11):
        assert [p for r in range(3) for p in three.positions(step, r)] == list(one.positions(step, 0))
    with pytest.raises(ValueError, match="rank=3 must be in 0..world_size-1=2"):
        three.positions(0, 3)


def test_loader_workers_partition_the_steps():
    parts = [worker_steps(5, 17, w, 3) for w in range(3)]
    assert sorted(s for part in parts for s in part) == list(range(5, 17))
    assert list(worker_steps(5, 17, 0, 0)) == list(range(5, 17))  # no workers: the main process builds all


def test_dataloader_workers_build_the_same_batches_in_step_order():
    ds = VolumeDataset(blob_volumes(3), train=False, seed=0)
    batches = StepBatches(ds, MaskCollator(TINY, seed=1), batch_size=2, seed=1, augment=AugmentConfig())
    with single_thread():
        inline = [batches[s] for s in range(2, 5)]
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=range(2, 5), num_workers=2, multiprocessing_context="spawn"
        )
        parallel = list(loader)
    for a, b in zip(inline, parallel, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stream_position_round_trips_and_refuses_another_dataset():
    stream = EpochStream(5, seed=0, batch_size=2, world_size=2)
    pos = stream.position_at(7)
    assert pos == StreamPosition(n_items=5, epoch=5, samples_seen=28) and stream.step_at(pos) == 7
    with pytest.raises(ValueError, match="trained on 6 items and this dataset has 5"):
        stream.step_at(StreamPosition(6, 0, 28))
    with pytest.raises(ValueError, match="not a whole number of global batches of 4"):
        stream.step_at(StreamPosition(5, 0, 30))


def test_epochs_become_steps_of_the_global_batch():
    assert steps_for_epochs(1, 10, batch_size=2, world_size=2) == 3  # 10 samples in batches of 4: round up
    assert steps_for_epochs(2.5, 1_550_000, batch_size=48, world_size=8) == 10_092
    with pytest.raises(ValueError, match="epochs=0 must be > 0"):
        steps_for_epochs(0, 10, 2)


def test_checkpoint_records_the_stream_and_resume_across_an_epoch_boundary_is_exact(tmp_path):
    ds = VolumeDataset(blob_volumes(3), train=False, seed=0)  # 3 items, batch 2: step 1 crosses into epoch 1
    cfg = dataclasses.replace(get_preset("tiny").train, steps=3, checkpoint_every=100)
    meta = {"snapshot_id": "snap-x"}
    with single_thread():
        straight = train(TINY, cfg, ds, tmp_path / "a", metadata=meta, progress=False)
        train(TINY, dataclasses.replace(cfg, steps=2), ds, tmp_path / "b", metadata=meta, progress=False)
        state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
        assert state["stream"] == {"n_items": 3, "epoch": 1, "samples_seen": 4}
        resumed = train(TINY, cfg, ds, tmp_path / "b", metadata=meta, progress=False)
        assert resumed.losses == straight.losses
        bigger = VolumeDataset(blob_volumes(4), train=False, seed=0)
        with pytest.raises(ValueError, match="trained on 3 items and this dataset has 4"):
            train(TINY, dataclasses.replace(cfg, steps=4), bigger, tmp_path / "b", metadata=meta, progress=False)
