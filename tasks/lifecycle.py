"""One lifecycle for every flow run: `running` → `completed` | `failed` | `interrupted`.

Flows wrap their body in `run_lifecycle(...)`: the run is recorded as `running` with its host and
PID before any work, a daemon thread refreshes its heartbeat, and leaving the block records
`completed` with the summary, or `failed` with the error class and message (and re-raises). A process
that dies without leaving the block (SIGKILL, OOM, power cut) cannot write anything, so every command
that opens the warehouse sweeps: a `running` row whose PID is gone on this host, or whose heartbeat
is older than `STALE_AFTER` on any host (a Dask worker or a second machine on shared storage), is
marked `interrupted`. See docs/architecture.md ("Run lifecycle").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from warehouse import runs
from warehouse.manifest import Manifest, now

log = logging.getLogger("mrifoundry.runs")

HEARTBEAT_SECONDS = 30.0
"""How often a live run proves it is alive (one tiny UPDATE)."""

STALE_AFTER = timedelta(minutes=10)
"""A run on another host with no heartbeat for this long is taken as dead (20 missed beats)."""


@dataclass
class RunHandle:
    """What the flow body can set while it runs: the summary recorded on completion."""

    run_id: str
    flow: str
    summary: dict[str, Any] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_dead(row: dict[str, Any], host: str, at: datetime) -> str | None:
    """Why a `running` row is dead, or None while it may still be alive."""
    beat = row.get("heartbeat_at")
    if row.get("host") == host and row.get("pid") is not None and not _pid_alive(int(row["pid"])):
        return f"process {row['pid']} on {host} ended without recording an outcome (killed or crashed)"
    if beat is not None and at - beat > STALE_AFTER:
        return f"no heartbeat from {row.get('host') or 'an unknown host'} since {beat:%Y-%m-%d %H:%M} UTC"
    if row.get("host") is None:  # written before runs had a lifecycle: nothing will ever close it
        return "recorded by a version without run heartbeats; no process is known to own it"
    return None


def sweep_interrupted(manifest: Manifest) -> int:
    """Mark every dead `running` run as `interrupted`; returns how many were marked.

    Called whenever a command opens the warehouse, so `status`, the dashboard and the next flow all
    see the truth. Runs of the calling process are alive by definition and are never touched.
    """
    host, at = socket.gethostname(), now()
    dead: dict[str, list[str]] = {}
    for row in runs.running_runs(manifest):
        reason = _is_dead(row, host, at)
        if reason is not None:
            dead.setdefault(reason, []).append(row["run_id"])
    marked = sum(runs.mark_interrupted(manifest, ids, reason) for reason, ids in dead.items())
    if marked:
        log.warning("marked %d run(s) interrupted: %s", marked, "; ".join(dead))
    return marked


def _beat(manifest: Manifest, handle: RunHandle) -> None:
    while not handle._stop.wait(HEARTBEAT_SECONDS):
        try:
            runs.heartbeat(manifest, handle.run_id)
        except Exception as err:  # a busy manifest must not kill the run; the next beat retries
            log.debug("heartbeat of %s failed: %s", handle.run_id, err)


@contextmanager
def run_lifecycle(
    manifest: Manifest, run_id: str, flow: str, params: dict[str, Any], *, redact: tuple[str, ...] = ()
) -> Iterator[RunHandle]:
    """Record the run around a flow body (see the module docstring); set `handle.summary` to keep it.

    `redact` lists strings (e.g. the source folder, which a PACS export may name after a patient)
    replaced by `<redacted>` in a recorded error message, so a failure cannot put them in the manifest.
    """
    handle = RunHandle(run_id=run_id, flow=flow)
    runs.start_run(manifest, run_id, flow, params, host=socket.gethostname(), pid=os.getpid(), started_at=now())
    beater = threading.Thread(target=_beat, args=(manifest, handle), name=f"heartbeat-{run_id}", daemon=True)
    beater.start()
    try:
        yield handle
    except BaseException as err:
        handle._stop.set()
        message = f"{type(err).__name__}: {err}"
        for secret in sorted((r for r in redact if r), key=len, reverse=True):
            message = message.replace(secret, "<redacted>")
        runs.finish_run(manifest, run_id, "failed", summary=handle.summary, error=message[:2000])
        raise
    else:
        handle._stop.set()
        runs.finish_run(manifest, run_id, "completed", summary=handle.summary)
    finally:
        beater.join(timeout=5)
