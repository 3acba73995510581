"""Run lifecycle: running → completed / failed (with the error) / interrupted (process gone)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tasks import lifecycle
from tasks.context import open_existing_warehouse, open_warehouse
from tasks.lifecycle import run_lifecycle, sweep_interrupted
from warehouse import runs
from warehouse.manifest import now


def test_completed_run_records_summary_and_host(tmp_path: Path) -> None:
    ctx = open_warehouse(tmp_path / "wh", run_id="run-ok")
    with run_lifecycle(ctx.manifest, ctx.run_id, "curate", {"a": 1}) as run:
        assert runs.run_row(ctx.manifest, "run-ok")["status"] == "running"
        run.summary = {"volumes": 3}
    row = runs.run_row(ctx.manifest, "run-ok")
    assert row["status"] == "completed" and row["error"] is None
    assert json.loads(row["summary_json"]) == {"volumes": 3}
    assert row["host"] == socket.gethostname() and row["pid"] == os.getpid()
    assert row["finished_at"] >= row["started_at"]


def test_failed_run_records_error_class_and_message_with_source_redacted(tmp_path: Path) -> None:
    ctx = open_warehouse(tmp_path / "wh", run_id="run-bad")
    source = "/pacs/MUELLER_HANS_19450101"
    with pytest.raises(ValueError), run_lifecycle(ctx.manifest, ctx.run_id, "curate", {}, redact=(source,)):
        raise ValueError(f"cannot read {source}/x.dcm: bad spacing 0.0")
    row = runs.run_row(ctx.manifest, "run-bad")
    assert row["status"] == "failed"
    assert row["error"] == "ValueError: cannot read <redacted>/x.dcm: bad spacing 0.0"
    assert "MUELLER" not in json.dumps(row, default=str)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_marks_dead_local_pid_and_stale_remote_runs_but_not_live_ones(tmp_path: Path) -> None:
    m = open_warehouse(tmp_path / "wh").manifest
    host, t = socket.gethostname(), now()
    runs.start_run(m, "dead-local", "curate", {}, host=host, pid=_dead_pid(), started_at=t)
    runs.start_run(m, "alive-local", "curate", {}, host=host, pid=os.getpid(), started_at=t)
    runs.start_run(m, "fresh-remote", "curate", {}, host="other-node", pid=1, started_at=t)
    stale = t - lifecycle.STALE_AFTER - timedelta(minutes=1)
    runs.start_run(m, "stale-remote", "pretrain", {}, host="other-node", pid=1, started_at=stale)
    assert sweep_interrupted(m) == 2
    status = {r: runs.run_row(m, r)["status"] for r in ("dead-local", "alive-local", "fresh-remote", "stale-remote")}
    assert status == {
        "dead-local": "interrupted",
        "alive-local": "running",
        "fresh-remote": "running",
        "stale-remote": "interrupted",
    }
    assert "ended without recording an outcome" in runs.run_row(m, "dead-local")["error"]
    assert "no heartbeat from other-node" in runs.run_row(m, "stale-remote")["error"]
    assert sweep_interrupted(m) == 0  # idempotent


def test_heartbeat_never_revives_a_finished_run(tmp_path: Path) -> None:
    m = open_warehouse(tmp_path / "wh").manifest
    runs.start_run(m, "r", "curate", {}, host="h", pid=1, started_at=now())
    runs.finish_run(m, "r", "completed", summary={})
    runs.heartbeat(m, "r")
    assert runs.run_row(m, "r")["status"] == "completed"
    with pytest.raises(ValueError, match="not 'interrupted'"):
        runs.finish_run(m, "r", "interrupted")


def test_open_existing_warehouse_refuses_a_missing_one_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mrifoundry curate SOURCE --warehouse"):
        open_existing_warehouse(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
