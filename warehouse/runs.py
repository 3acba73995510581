"""The `runs` table: one row per flow run, and the set-based sweep that finds the dead ones.

A run is `running` from start until its process writes `completed` or `failed`. A process killed by
SIGKILL, the OOM killer or a power cut writes nothing, so readers decide: a `running` row whose
process is gone (same host, PID not alive) or whose heartbeat is stale (any host) is `interrupted`.
Host and PID are plain process facts, never patient data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from warehouse.manifest import WRITE_LOCK, Manifest, now

RUN_STATES = ("running", "completed", "failed", "interrupted")


def start_run(
    m: Manifest, run_id: str, flow: str, params: dict[str, Any], *, host: str, pid: int, started_at: datetime
) -> None:
    """Record a run as `running` (replacing any earlier row of the same id, e.g. a retried flow)."""
    m.upsert(
        "runs",
        [
            {
                "run_id": run_id,
                "flow": flow,
                "status": "running",
                "started_at": started_at,
                "finished_at": None,
                "params_json": json.dumps(params, default=str, sort_keys=True),
                "summary_json": None,
                "host": host,
                "pid": pid,
                "heartbeat_at": started_at,
                "error": None,
            }
        ],
    )


def heartbeat(m: Manifest, run_id: str) -> None:
    """Prove the run is alive; only a `running` row is touched, so a late beat cannot revive a dead run."""
    m.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'", [now(), run_id])


def finish_run(
    m: Manifest, run_id: str, status: str, *, summary: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """Close a run as `completed` or `failed`, with its summary or the error that stopped it."""
    if status not in ("completed", "failed"):
        raise ValueError(f"a run finishes as 'completed' or 'failed', not {status!r}")
    m.execute(
        "UPDATE runs SET status = ?, finished_at = ?, heartbeat_at = ?, summary_json = ?, error = ? WHERE run_id = ?",
        [
            status,
            now(),
            now(),
            json.dumps(summary, default=str, sort_keys=True) if summary is not None else None,
            error,
            run_id,
        ],
    )


def running_runs(m: Manifest) -> list[dict[str, Any]]:
    """Rows still marked `running`: the candidates for the interrupted-run sweep."""
    return m.query("SELECT run_id, flow, host, pid, heartbeat_at FROM runs WHERE status = 'running'")


def mark_interrupted(m: Manifest, run_ids: Iterable[str], reason: str) -> int:
    """Mark the given `running` runs as `interrupted` in one statement; returns how many changed."""
    ids = sorted(set(run_ids))
    if not ids:
        return 0
    with WRITE_LOCK, m.connect() as con:
        before = con.execute("SELECT count(*) FROM runs WHERE status = 'running' AND run_id IN ?", [ids]).fetchone()
        con.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = coalesce(heartbeat_at, started_at), error = ? "
            "WHERE status = 'running' AND run_id IN ?",
            [reason, ids],
        )
    return int(before[0]) if before else 0


def run_row(m: Manifest, run_id: str) -> dict[str, Any] | None:
    """One run as stored (status, error, summary), or None."""
    rows = m.query(
        "SELECT run_id, flow, status, started_at, finished_at, host, pid, heartbeat_at, error, summary_json "
        "FROM runs WHERE run_id = ?",
        [run_id],
    )
    return rows[0] if rows else None


def latest_completed_summary(m: Manifest, flow: str) -> dict[str, Any] | None:
    """The parsed summary_json of the newest completed run of ``flow``; None if none has one.

    The report plots the pretraining losses from it, so a failed or running pretrain never shows.
    """
    summary = m.scalar(
        "SELECT summary_json FROM runs WHERE flow = ? AND status = 'completed' ORDER BY finished_at DESC LIMIT 1",
        [flow],
    )
    return json.loads(summary) if summary else None
