"""The training loop: learning, exact resume, checkpoint contents, skipped steps, encoder loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.data import VolumeDataset
from model.encoder import Encoder
from model.presets import get_preset
from model.train import StepBatches, load_encoder, train
from tests.model import TINY, blob_volumes, single_thread

TRAIN = get_preset("tiny").train  # batch 2, 20 steps, warmup 5
META = {"snapshot_id": "snap-001", "code_version": "abc123"}


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def dataset() -> VolumeDataset:
    return VolumeDataset(blob_volumes(4), train=True, seed=0)


def test_loss_decreases_over_twenty_tiny_steps(tmp_path):
    logs: list[dict] = []
    result = train(TINY, TRAIN, dataset(), tmp_path, metadata=META, log=logs.append, progress=False)
    assert result.steps == 20 and len(result.losses) == 20 and result.skipped_steps == 0
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < 0.95 * first, result.losses
    assert [r["step"] for r in logs] == list(range(1, 21))
    assert {"lr", "loss", "grad_norm", "target_std", "moe0_minvio", "moe0_maxvio", "step_seconds"} <= set(logs[0])
    assert logs[0]["lr"] == pytest.approx(TRAIN.start_lr) and logs[-1]["lr"] == pytest.approx(TRAIN.lr)


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    cfg = dataclasses.replace(TRAIN, steps=6, checkpoint_every=100)
    straight = train(TINY, cfg, dataset(), tmp_path / "a", metadata=META, progress=False)
    part = train(TINY, dataclasses.replace(cfg, steps=3), dataset(), tmp_path / "b", metadata=META, progress=False)
    assert part.steps == 3
    resumed = train(TINY, cfg, dataset(), tmp_path / "b", metadata=META, progress=False)
    assert resumed.losses == straight.losses  # bit-for-bit, including the 3 steps before the restart
    a = torch.load(straight.checkpoint_path, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint_path, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_holds_everything_needed_to_resume_and_trace(tmp_path):
    cfg = dataclasses.replace(TRAIN, steps=2)
    result = train(TINY, cfg, dataset(), tmp_path, metadata=META, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # atomic write left no temp file
    state = torch.load(result.checkpoint_path, weights_only=True)
    assert state["metadata"] == META
    assert state["step"] == 2 and state["model_config"] == TINY.to_dict() and state["train_config"] == cfg.to_dict()
    assert {"model", "optimizer", "rng", "losses", "skipped_steps"} <= set(state)
    assert any(k.startswith("target_encoder.") and k.endswith("expert_bias") for k in state["model"])


def test_load_encoder_returns_the_ema_target_in_eval_mode(tmp_path):
    result = train(TINY, dataclasses.replace(TRAIN, steps=2), dataset(), tmp_path, metadata=META, progress=False)
    encoder, cfg = load_encoder(result.checkpoint_path)
    assert isinstance(encoder, Encoder) and cfg == TINY and not encoder.training
    weights = torch.load(result.checkpoint_path, weights_only=True)["model"]
    assert torch.equal(encoder.patch_embed.proj.weight, weights["target_encoder.patch_embed.proj.weight"])
    with torch.no_grad():
        assert encoder(torch.rand(1, 1, *TINY.img_size)).shape == (1, 576, TINY.enc_width)


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    bad = [{"image": torch.full((1, *TINY.img_size), float("nan")), "fg": torch.ones(576, dtype=torch.bool)}]
    result = train(TINY, dataclasses.replace(TRAIN, steps=2), bad, tmp_path, metadata=META, progress=False)
    assert result.skipped_steps == 2 and result.steps == 2
    state = torch.load(result.checkpoint_path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_refuses_a_different_model_config(tmp_path):
    train(TINY, dataclasses.replace(TRAIN, steps=1), dataset(), tmp_path, metadata=META, progress=False)
    with pytest.raises(ValueError, match="different \\['enc_depth'\\]"):
        train(dataclasses.replace(TINY, enc_depth=3), TRAIN, dataset(), tmp_path, metadata=META, progress=False)


def test_metadata_must_be_json_serialisable(tmp_path):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        train(TINY, TRAIN, dataset(), tmp_path, metadata={"when": object()}, progress=False)


def test_step_batches_cover_each_epoch_once_and_are_deterministic():
    batches = StepBatches(list(range(5)), collator=None, batch_size=2, seed=0)  # type: ignore[arg-type]
    first_epoch = [i for step in range(3) for i, _ in batches.indices(step)][:5]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert batches.indices(7) == StepBatches(list(range(5)), None, 2, 0).indices(7)  # type: ignore[arg-type]
    assert [draw for _, draw in batches.indices(3)] == [6, 7]
