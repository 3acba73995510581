"""The training loop: learning, exact resume, checkpoint contents, skipped steps, encoder loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.checkpoint import CHECKPOINT_FORMAT
from model.data import VolumeDataset
from model.encoder import Encoder
from model.presets import ablation_ladder, get_preset
from model.train import StepBatches, _postfix, cooldown, load_encoder, train
from tests.model import TINY, blob_volumes, single_thread

TRAIN = get_preset("tiny").train  # batch 2, 20 steps, warmup 5
META = {"snapshot_id": "snap-001", "code_version": "abc123"}


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def dataset() -> VolumeDataset:
    return VolumeDataset(blob_volumes(4), train=False, seed=0)  # augmented by the loop, on the device


def test_loss_decreases_over_twenty_tiny_steps(tmp_path):
    logs: list[dict] = []
    result = train(TINY, TRAIN, dataset(), tmp_path, metadata=META, log=logs.append, progress=False)
    assert result.steps == 20 and len(result.losses) == 20 and result.skipped_steps == 0
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < 0.95 * first, result.losses
    assert [r["step"] for r in logs] == list(range(1, 21))
    assert logs[0]["lr"] == pytest.approx(TRAIN.start_lr) and logs[-1]["lr"] == pytest.approx(TRAIN.lr)
    assert [r["loss"] for r in logs] == list(result.losses)


def test_every_step_logs_loss_lr_grad_norm_vio_and_throughput(tmp_path):
    logs: list[dict] = []
    cfg = dataclasses.replace(TRAIN, steps=2)
    train(TINY, cfg, dataset(), tmp_path, metadata=META, log=logs.append, progress=False)
    record = logs[-1]
    keys = {"lr", "loss", "grad_norm", "target_std", "moe0_minvio", "moe0_maxvio", "minvio", "maxvio"}
    assert keys | {"step_seconds", "data_seconds", "samples_per_s", "tokens_per_s"} <= set(record)
    assert record["grad_norm"] > 0 and record["minvio"] <= 1.0 <= record["maxvio"]
    assert (record["minvio"], record["maxvio"]) == (record["moe0_minvio"], record["moe0_maxvio"])  # one MoE layer
    seconds = record["step_seconds"] + record["data_seconds"]
    assert record["tokens_per_s"] == pytest.approx(576 * record["samples_per_s"])
    assert record["samples_per_s"] == pytest.approx(TRAIN.batch_size / seconds, rel=0.2)  # (+ logging time)
    postfix = _postfix(record)
    assert list(postfix) == ["loss", "lr", "gnorm", "maxvio", "tok/s"]
    assert postfix["loss"] == f"{record['loss']:.4f}"


@pytest.mark.parametrize("rung", list(ablation_ladder(TINY)))
def test_every_rung_of_the_ablation_ladder_trains_in_tiny(tmp_path, rung):
    cfg = ablation_ladder(TINY)[rung]
    logs: list[dict] = []
    result = train(cfg, dataclasses.replace(TRAIN, steps=1), dataset(), tmp_path, metadata=META, log=logs.append,
                   progress=False)  # fmt: skip
    assert result.skipped_steps == 0 and result.final_loss > 0
    generators = {k for k in logs[0] if k.startswith("loss_g")}
    assert generators == {f"loss_g{g}" for g in range(cfg.n_mask_generators)}  # 2 for V-JEPA 2, else 3
    assert ("maxvio" in logs[0]) == cfg.use_moe  # routing statistics exactly when there are experts


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path):
    cfg = dataclasses.replace(TRAIN, steps=6, checkpoint_every=100)
    straight = train(TINY, cfg, dataset(), tmp_path / "a", metadata=META, progress=False)
    part = train(TINY, dataclasses.replace(cfg, steps=3), dataset(), tmp_path / "b", metadata=META, progress=False)
    assert part.steps == 3
    resumed = train(TINY, cfg, dataset(), tmp_path / "b", metadata=META, progress=False)
    assert resumed.losses == straight.losses  # bit-for-bit, including the 3 steps before the restart
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"] == b["history"] and b["history"]["step"] == list(range(1, 7))  # the curve resumes too


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


def test_compiling_the_grouped_moe_off_cuda_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="compile=True with moe_impl='grouped' needs the bf16 autocast of CUDA"):
        train(TINY, dataclasses.replace(TRAIN, compile=True, device="cpu"), dataset(), tmp_path, metadata=META)
    assert not (tmp_path / "last.pt").exists()


def test_metadata_must_be_json_serialisable(tmp_path):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        train(TINY, TRAIN, dataset(), tmp_path, metadata={"when": object()}, progress=False)


def test_step_batches_cover_each_epoch_once_and_are_deterministic():
    batches = StepBatches(list(range(5)), collator=None, batch_size=2, seed=0)  # type: ignore[arg-type]
    first_epoch = [i for step in range(3) for i, _ in batches.indices(step)][:5]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert batches.indices(7) == StepBatches(list(range(5)), None, 2, 0).indices(7)  # type: ignore[arg-type]
    assert [draw for _, draw in batches.indices(3)] == [6, 7]


def test_cooldown_continues_a_main_checkpoint_and_decays_lr_to_final_lr(tmp_path):
    main = train(TINY, dataclasses.replace(TRAIN, steps=2), dataset(), tmp_path / "main", metadata=META, progress=False)
    cfg = dataclasses.replace(TRAIN, cooldown_steps=4, final_lr=1e-6)
    logs: list[dict] = []
    result = cooldown(
        TINY, cfg, dataset(), tmp_path / "cool", init_from=main.checkpoint_path, metadata=META, log=logs.append,
        progress=False,
    )  # fmt: skip
    assert result.steps == 4 and len(result.losses) == 4 and result.skipped_steps == 0
    lrs = [r["lr"] for r in logs]
    assert lrs == pytest.approx([cfg.lr + (1e-6 - cfg.lr) * k / 4 for k in (1, 2, 3, 4)])
    state = torch.load(result.checkpoint_path, weights_only=True)
    assert state["phase"] == "cooldown" and state["step"] == 4
    assert state["init"] == {"path": str(main.checkpoint_path), "step": 2}
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {6.0}  # AdamW moments carried over from the main phase: 2 + 4 updates


def test_cooldown_resumes_exactly_and_phases_never_share_a_checkpoint(tmp_path):
    main = train(TINY, dataclasses.replace(TRAIN, steps=1), dataset(), tmp_path / "main", metadata=META, progress=False)
    cfg = dataclasses.replace(TRAIN, cooldown_steps=4, checkpoint_every=2)

    def cool(out: str, c=cfg, log=None):
        return cooldown(TINY, c, dataset(), tmp_path / out, init_from=main.checkpoint_path, metadata=META, log=log,
                        progress=False)  # fmt: skip

    straight = cool("a")

    def crash_at_step_3(record: dict) -> None:  # killed after the step-2 checkpoint was written
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cool("b", log=crash_at_step_3)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 2
    resumed = cool("b")
    assert resumed.losses == straight.losses  # bit-for-bit, lr schedule and data stream included
    a = torch.load(straight.checkpoint_path, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint_path, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ValueError, match="different \\['cooldown_steps'\\]"):  # it shapes the schedule
        cool("b", c=dataclasses.replace(cfg, cooldown_steps=6))
    with pytest.raises(ValueError, match="is a main-phase checkpoint, but this is the cooldown phase"):
        cool("main")
    with pytest.raises(ValueError, match="is a cooldown-phase checkpoint; cool down a main-phase one"):
        cooldown(TINY, cfg, dataset(), tmp_path / "c", init_from=straight.checkpoint_path, metadata=META)


def test_resume_refuses_a_different_world_size(tmp_path):
    result = train(TINY, dataclasses.replace(TRAIN, steps=1), dataset(), tmp_path, metadata=META, progress=False)
    state = torch.load(result.checkpoint_path, weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["world_size"] == 1 and state["phase"] == "main"
    state["world_size"] = 2
    torch.save(state, result.checkpoint_path)
    with pytest.raises(ValueError, match="trained by 2 processes and this run has 1"):
        train(TINY, TRAIN, dataset(), tmp_path, metadata=META, progress=False)


def test_load_encoder_reads_checkpoints_from_before_the_attention_gate(tmp_path):
    old_cfg = dataclasses.replace(TINY, attn_gate=False)
    encoder = Encoder(old_cfg)
    config = {k: v for k, v in old_cfg.to_dict().items() if k != "attn_gate"}  # format 1 had no such field
    weights = {f"target_encoder.{k}": v for k, v in encoder.state_dict().items()}
    torch.save({"format": 1, "model_config": config, "model": weights}, tmp_path / "old.pt")
    loaded, cfg = load_encoder(tmp_path / "old.pt")
    assert cfg == old_cfg and loaded.blocks[0].attn.gate is None
    (tmp_path / "old.pt").rename(tmp_path / "last.pt")
    with pytest.raises(ValueError, match="format 1, this code writes 3; training cannot continue from it"):
        train(TINY, TRAIN, dataset(), tmp_path, metadata=META, progress=False)


def test_a_skipped_step_does_not_advance_the_lr_schedule(tmp_path):
    bad = [{"image": torch.full((1, *TINY.img_size), float("nan")), "fg": torch.ones(576, dtype=torch.bool)}]
    logs: list[dict] = []
    cfg = dataclasses.replace(TRAIN, steps=3)  # warmup 5: the rate would rise every applied step
    train(TINY, cfg, bad, tmp_path, metadata=META, log=logs.append, progress=False)
    assert [r["skipped"] for r in logs] == [1.0, 1.0, 1.0]
    assert [r["lr"] for r in logs] == [cfg.start_lr] * 3  # still step 0 of the schedule
    assert cfg.lr_at(1) > cfg.start_lr


def test_weights_are_truncated_at_two_absolute_not_two_sigma():
    from model.jepa import JEPA

    torch.manual_seed(0)
    model = JEPA(dataclasses.replace(TINY, init_std=0.02))
    w = model.context_encoder.blocks[0].mlp.fc1.weight  # not rescaled by depth
    assert w.std().item() == pytest.approx(0.02, rel=0.03)  # +-2 sigma truncation would give 0.0176
    assert (w.abs() > 0.04).float().mean().item() > 0.03  # ~4.6 % of a normal lies beyond 2 sigma
    experts = model.context_encoder.blocks[1].mlp.w1
    assert experts.std().item() == pytest.approx(0.02, rel=0.03)


def test_checkpoint_keeps_the_curve_and_a_cooldown_continues_its_steps(tmp_path):
    logs: list[dict] = []
    main = train(TINY, dataclasses.replace(TRAIN, steps=3), dataset(), tmp_path / "main", metadata=META,
                 log=logs.append, progress=False)  # fmt: skip
    h = torch.load(main.checkpoint_path, weights_only=True)["history"]
    assert h["step"] == [1, 2, 3] and h["loss"] == list(main.losses)
    assert h["lr"] == [r["lr"] for r in logs] and h["maxvio"] == [r["maxvio"] for r in logs]
    assert h["minvio"][-1] == logs[-1]["minvio"] and h["phases"] == [{"phase": "main", "start": 0}]
    cool_logs: list[dict] = []
    cool = cooldown(TINY, dataclasses.replace(TRAIN, cooldown_steps=2), dataset(), tmp_path / "cool",
                    init_from=main.checkpoint_path, metadata=META, log=cool_logs.append, progress=False)  # fmt: skip
    c = torch.load(cool.checkpoint_path, weights_only=True)["history"]
    assert c["step"] == [1, 2, 3, 4, 5] and c["loss"] == [*main.losses, *cool.losses]
    assert c["lr"][3:] == [r["lr"] for r in cool_logs]
    assert c["phases"] == [{"phase": "main", "start": 0}, {"phase": "cooldown", "start": 3}]
