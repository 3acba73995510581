"""Data parallelism: a 2-process gloo run equals a single-process run on the same global batch.

The worker joins the group through `init_distributed()` from torchrun's environment variables, so
the torchrun entry path is what is tested, only started by torch.multiprocessing instead of torchrun.
The real launcher (`mrifoundry pretrain --nproc-per-node 2` on a warehouse) is tested in
tests/tasks/test_train_launcher.py.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from model.augment import PARAM_KEYS, AugmentConfig
from model.data import VolumeDataset
from model.distributed import World, current_world, device_for, init_distributed
from model.jepa import JEPA
from model.masks import MaskCollator
from model.train import StepBatches, train
from tests.model import TINY, blob_volumes, single_thread
from tests.model.ddp_worker import META, STEPS, recipe, run_rank

WORLD = 2


def items() -> list[dict[str, torch.Tensor]]:
    """Four prepared volumes (no augmentation: the worker processes need no MONAI)."""
    ds = VolumeDataset(blob_volumes(4), train=False, seed=0)
    return [ds[i] for i in range(len(ds))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_matches_single_process_on_the_same_global_batch(tmp_path):
    ddp_dir, data = tmp_path / "ddp", items()
    mp.spawn(run_rank, args=(WORLD, _free_port(), data, str(ddp_dir)), nprocs=WORLD, join=True)
    with single_thread():  # the same global batch in one process: 2 samples per step instead of 1 per rank
        single = train(TINY, recipe(WORLD), data, tmp_path / "single", metadata=META, progress=False)

    rank_losses = [torch.load(ddp_dir / f"losses{r}.pt") for r in range(WORLD)]
    assert rank_losses[0] == rank_losses[1]  # all-reduced: every rank records the same global loss
    torch.testing.assert_close(torch.tensor(rank_losses[0]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)

    ddp_state = torch.load(ddp_dir / "last.pt", weights_only=True)
    single_state = torch.load(single.checkpoint_path, weights_only=True)
    assert ddp_state["world_size"] == WORLD and ddp_state["step"] == STEPS
    weights, biases = ddp_state["model"], single_state["model"]
    bias_keys = [k for k in weights if k.endswith("expert_bias")]
    assert len(bias_keys) == 2  # context and target encoder of the tiny preset
    for key in bias_keys:  # counts summed over ranks: the same integer counts, the same bias, bit for bit
        assert biases[key].abs().max() > 0  # the update actually ran
        assert torch.equal(weights[key], biases[key]), key
    for key, value in biases.items():  # gradients averaged over ranks = the gradient of the global batch
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.manual_seed(recipe(1).seed)
    initial = JEPA(TINY).state_dict()
    key = "context_encoder.blocks.0.attn.qkv.weight"  # the runs did train: the comparison above is not vacuous
    assert (biases[key] - initial[key]).abs().max() > 1e-4


def test_rank_slices_partition_the_global_batch_and_keep_its_masks_and_augmentations():
    ds = VolumeDataset(blob_volumes(3), train=False, seed=0)
    collator = MaskCollator(TINY, seed=5)
    whole = StepBatches(ds, collator, batch_size=4, seed=5, augment=AugmentConfig())
    parts = [StepBatches(ds, collator, 2, seed=5, rank=r, world_size=2, augment=AugmentConfig()) for r in range(2)]
    for step in (0, 3):
        assert parts[0].indices(step) + parts[1].indices(step) == whole.indices(step)
    with single_thread():
        full, halves = whole[1], [p[1] for p in parts]
    for key in ("context_idx", "target_idx"):  # [G, B, K]: rank r holds columns 2r, 2r+1
        assert torch.equal(torch.cat([h[key] for h in halves], dim=1), full[key])
    for key in ("image", "fg", *PARAM_KEYS):  # [B, ...]: rank r holds rows 2r, 2r+1
        assert torch.equal(torch.cat([h[key] for h in halves]), full[key]), key
    assert full["aug_flip"].any() and not full["aug_flip"].all()  # flips drawn, and they differ per sample


def test_step_batches_reject_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank=2 must be in 0..world_size-1=1"):
        StepBatches([0], None, 1, 0, rank=2, world_size=2)  # type: ignore[arg-type]


def test_without_torchrun_environment_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() == World() == current_world()
    assert not World().distributed and World().is_main
    assert device_for(World(rank=1, world_size=2, local_rank=1), "cuda") == torch.device("cuda", 1)
    assert device_for(World(), "cpu") == torch.device("cpu")


def test_partial_torchrun_environment_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="\\['RANK', 'MASTER_ADDR', 'MASTER_PORT'\\] are not"):
        init_distributed()
