"""The pretraining launcher on a real (small) warehouse: torchrun DDP, the cooldown phase, flat memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.train import Launch, TrainSpec, pretrain, torchrun_command
from tests.tasks.snapshot_fixture import small_warehouse
from warehouse.queries import latest_snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return small_warehouse(tmp_path_factory.mktemp("wh"), n=6, shard_size=4, lesions=False)


def test_two_gloo_processes_train_from_the_snapshot_then_cool_down(ctx, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main = pretrain(ctx, preset="tiny", steps=2, launch=Launch(nproc_per_node=2))
    assert (main.phase, main.world_size, main.steps, main.skipped_steps, main.n_volumes) == ("main", 2, 2, 0, 6)
    snap = latest_snapshot(ctx.manifest)
    state = torch.load(main.checkpoint_path, weights_only=True)
    assert state["world_size"] == 2 and state["stream"] == {"n_items": 6, "epoch": 1, "samples_seen": 8}
    meta = state["metadata"]
    assert (meta["snapshot_id"], meta["preset"], meta["world_size"]) == (snap, "tiny", 2) and meta["code_version"]
    rows = ctx.manifest.query("SELECT checkpoint_id, steps, path FROM checkpoints")
    assert [(r["checkpoint_id"], r["steps"]) for r in rows] == [(main.checkpoint_id, 2)]

    again = pretrain(ctx, preset="tiny", steps=2, launch=Launch(nproc_per_node=2))  # finished: nothing retrained
    assert again.losses == main.losses and again.seconds < main.seconds + 60

    cool = pretrain(ctx, preset="tiny", steps=2, phase="cooldown", init_from=main.checkpoint_id)
    assert (cool.phase, cool.steps, cool.world_size) == ("cooldown", 2, 1)
    cool_state = torch.load(cool.checkpoint_path, weights_only=True)
    assert cool_state["phase"] == "cooldown" and cool_state["init"] == {"path": str(main.checkpoint_path), "step": 2}
    lr = get_lr(cool_state)
    assert lr == pytest.approx(cool_state["train_config"]["final_lr"])  # decayed all the way down
    assert ctx.manifest.count("checkpoints") == 2


def get_lr(state: dict) -> float:
    return state["optimizer"]["param_groups"][0]["lr"]


def test_launcher_arguments_are_checked_before_anything_starts(ctx):
    with pytest.raises(ValueError, match="needs --rdzv-endpoint HOST:PORT"):
        Launch(nproc_per_node=8, nnodes=2)
    with pytest.raises(ValueError, match="--steps or --epochs, not both"):
        pretrain(ctx, steps=1, epochs=1.0)
    with pytest.raises(ValueError, match="needs --from CHECKPOINT"):
        pretrain(ctx, phase="cooldown")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a checkpoint id"):
        pretrain(ctx, phase="cooldown", init_from="ckpt-nope")


def test_multi_node_command_uses_the_rendezvous_and_a_job_id(tmp_path):
    cmd = torchrun_command(tmp_path / "spec.json", Launch(8, 2, "node1:29400"), "job1")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nproc-per-node=8", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29400"} <= set(cmd)
    assert "--rdzv-id=job1" in cmd and cmd[-4:] == [
        "-m",
        "tasks.pretrain_worker",
        "--spec",
        str(tmp_path / "spec.json"),
    ]
    assert "--standalone" in torchrun_command(tmp_path / "spec.json", Launch(2), "job1")
    spec = TrainSpec("w", "run", "tiny", "snap", "out", phase="cooldown", epochs=2.0, init_from="x.pt")
    assert TrainSpec.from_json(spec.to_json()) == spec


def test_epochs_set_the_steps_from_the_snapshot_size(tmp_path):
    ctx = small_warehouse(tmp_path, n=5, shard_size=4, lesions=False)
    out = pretrain(ctx, preset="tiny", epochs=1.0, snapshot_id=latest_snapshot(ctx.manifest))
    assert out.steps == 3  # 5 volumes in batches of 2, rounded up


PEAK_RSS = """
import resource, sys, torch
torch.set_num_threads(1)
from tasks.context import open_warehouse
from tasks.train import pretrain
pretrain(open_warehouse(sys.argv[1]), preset="tiny", steps=2)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_the_snapshot(tmp_path):
    """The bench's measurement (bench/train_memory.py) on 4 and 40 volumes: ~4 MiB more per volume loaded."""
    peaks = {}
    for n in (4, 40):
        small_warehouse(tmp_path / f"n{n}", n=n, shard_size=8, lesions=False)
        res = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(tmp_path / f"n{n}")], cwd=ROOT, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr[-2000:]
        peaks[n] = int(res.stdout.strip().splitlines()[-1]) / 1024  # MiB
    assert peaks[40] / peaks[4] < 1.2, json.dumps(peaks)  # loading 36 more volumes would add ~150-200 MiB
