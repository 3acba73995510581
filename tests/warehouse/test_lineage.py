"""Checkpoint lineage: the base of the next retrain, the chain of parents, and how `status` shows it."""

from __future__ import annotations

from datetime import datetime, timedelta

from warehouse.lineage import latest_main_checkpoint, lineage
from warehouse.manifest import Manifest

T0 = datetime(2026, 1, 1)


def _ck(cid, parent, phase, snap, seen, minutes, preset="tiny"):
    return {
        "checkpoint_id": cid,
        "parent_checkpoint_id": parent,
        "phase": phase,
        "snapshot_id": snap,
        "snapshots_seen": seen,
        "preset": preset,
        "steps": 10,
        "final_loss": 0.5,
        "path": f"checkpoints/{cid}/last.pt",
        "created_at": T0 + timedelta(minutes=minutes),
    }


def _warehouse(tmp_path) -> Manifest:
    m = Manifest(tmp_path).init()
    m.upsert(
        "checkpoints",
        [
            _ck("ckpt-a", None, "main", "snap-1", ["snap-1"], 0),
            _ck("ckpt-b", "ckpt-a", "main", "snap-2", ["snap-1", "snap-2"], 10),
            _ck("ckpt-c", "ckpt-b", "cooldown", "snap-2", ["snap-1", "snap-2"], 20),
            _ck("ckpt-s", None, "main", "snap-2", ["snap-2"], 30, preset="small"),
        ],
    )
    return m


def test_next_retrain_continues_from_the_latest_main_checkpoint_of_its_preset(tmp_path):
    m = _warehouse(tmp_path)
    assert latest_main_checkpoint(m, "tiny")["checkpoint_id"] == "ckpt-b"  # not the cooldown, not `small`
    assert latest_main_checkpoint(m, "small")["checkpoint_id"] == "ckpt-s"
    assert latest_main_checkpoint(m, "base") is None


def test_lineage_walks_parents_and_stops_on_a_cycle(tmp_path):
    m = _warehouse(tmp_path)
    assert [r["checkpoint_id"] for r in lineage(m, "ckpt-c")] == ["ckpt-c", "ckpt-b", "ckpt-a"]
    m.upsert("checkpoints", [_ck("ckpt-a", "ckpt-c", "main", "snap-1", ["snap-1"], 0)])  # hand-made loop
    assert [r["checkpoint_id"] for r in lineage(m, "ckpt-c")] == ["ckpt-c", "ckpt-b", "ckpt-a"]


def test_status_prints_the_lineage(tmp_path, capsys):
    from flows.commands.status import print_status

    m = _warehouse(tmp_path)
    m.upsert("checkpoints", [_ck("ckpt-s", None, "main", "snap-2", ["snap-2"], -5, preset="small")])
    assert print_status(tmp_path, as_json=False) == 0
    out = capsys.readouterr().out
    lines = out[out.index("Lineage") :].splitlines()
    assert [ln.split()[0] for ln in lines[1:4]] == ["ckpt-c", "ckpt-b", "ckpt-a"]
    assert "trained from scratch" in lines[4]
    assert "Snapshots seen by the latest checkpoint (2): snap-1, snap-2" in out
