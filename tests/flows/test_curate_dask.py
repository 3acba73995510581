"""The curate flow on Dask: a 2-worker LocalCluster, the failures listing, kill-and-resume, one writer.

One tiny export (one subject: T1w, T2w, FLAIR + rejected series and broken files) is curated once
in-process on a 2-worker LocalCluster (the reference). Real `mrifoundry curate` subprocesses (one
worker each: cheaper, and the result must not depend on the cluster size either) then curate it
into a second warehouse and are SIGKILLed at two points (after the series are recorded;
after the T1w is curated but before its T2w/FLAIR); the run that finishes must leave the same
volumes, decisions and snapshot as the reference. While it runs, a second curate with --no-wait is
refused, a third waits for the lock and then finds nothing to do, and `status` still answers.
All subprocesses share the session's Prefect API (no ephemeral server per process).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warehouse.manifest import Manifest

CLI = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]
KEY = "cd" * 32


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from tasks.synthetic import make_export

    return make_export(tmp_path_factory.mktemp("export"), preset="tiny", seed=3, subjects=1)


@pytest.fixture(scope="module")
def reference(export, prefect_harness, tmp_path_factory):
    """The uninterrupted run: in-process flow, 2 single-threaded Dask workers."""
    from flows.curate import curate_flow, dask_runner

    wh = tmp_path_factory.mktemp("reference")
    old = os.environ.get("MRIFOUNDRY_DEID_KEY")
    os.environ["MRIFOUNDRY_DEID_KEY"] = KEY
    try:
        flow = curate_flow.with_options(task_runner=dask_runner(workers=2))
        summary = flow(str(export.dicom_dir), str(wh), skullstrip="deepbet")
    finally:
        if old is None:
            os.environ.pop("MRIFOUNDRY_DEID_KEY")
        else:
            os.environ["MRIFOUNDRY_DEID_KEY"] = old
    return {"warehouse": wh, "summary": summary}


def _env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MRIFOUNDRY_DEID_KEY": KEY}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session harness's server
    return env


def _curate(export, wh: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CLI,
            "curate",
            str(export.dicom_dir),
            "--warehouse",
            str(wh),
            "--skullstrip",
            "deepbet",
            "--workers",
            "1",
            *extra,
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _count(wh: Path, sql: str) -> int:
    try:
        with Manifest(wh).connect(read_only=True) as con:
            return int(con.execute(sql).fetchone()[0] or 0)
    except Exception:  # not created yet, or the writer holds the file for a moment
        return 0


def _kill_when(proc: subprocess.Popen, wh: Path, sql: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and not _count(wh, sql):
            time.sleep(0.3)
        assert proc.poll() is None, f"curate ended before the kill point ({sql}): {proc.communicate()[1][-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _lock_held(wh: Path) -> bool:
    path = wh / "curate.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _result(wh: Path) -> dict:
    """What a curation leaves behind that must not depend on interruptions."""
    m = Manifest(wh)
    return {
        "volumes": sorted(
            (r["series_key"], r["volume_id"], r["label"], r["skullstrip_backend"])
            for r in m.query("SELECT series_key, volume_id, label, skullstrip_backend FROM volumes")
        ),
        "decisions": sorted((r["volume_id"], r["decision"], tuple(r["reasons"])) for r in m.query("SELECT * FROM qc")),
        "series": sorted((r["series_key"], r["state"], r["reason"]) for r in m.query("SELECT * FROM series")),
        "snapshots": [r["snapshot_id"] for r in m.query("SELECT snapshot_id FROM snapshots ORDER BY snapshot_id")],
    }


T1W_CURATED = (
    "SELECT count(*) FROM series s JOIN classification c USING (series_key) "
    "WHERE c.label = 'T1w' AND s.state = 'curated'"
)


def test_dask_runner_uses_both_workers_and_curates_every_series(reference, export):
    s = reference["summary"]
    pre = s["preprocessing"]
    assert s["series_processed"] == 3 and pre["series"] == 3 and pre["failed"] == 0
    assert pre["workers_used"] == 2, pre  # the T2w and FLAIR ran side by side once the T1w was in
    assert s["snapshot_id"] and s["snapshot_volumes"] >= 1
    m = Manifest(reference["warehouse"])
    backends = {r["label"]: r["skullstrip_backend"] for r in m.query("SELECT label, skullstrip_backend FROM volumes")}
    assert backends["T1w"] == "deepbet"
    assert backends["T2w"] == backends["FLAIR"] == "t1w-mask:deepbet"  # the explicit T1w-mask dependency


def test_failures_lists_rejected_files_and_series_with_pseudonymised_paths(reference, export, capsys):
    from flows.cli import main

    wh = reference["warehouse"]
    assert main(["failures", "--warehouse", str(wh), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    truth = json.loads(export.truth_json.read_text())
    files = [r for r in rows if r["kind"] == "file"]
    series = [r for r in rows if r["kind"] == "series"]
    assert len(series) == sum(1 for t in truth["series"] if t.get("expected_rejection"))
    assert {b["reason"] for b in truth["broken_files"]} <= {r["reason"] for r in files} | {"unreadable"}
    assert all(r["reason"] and r["path"] for r in rows)
    for r in files:  # pseudonymised folders: no component of the real source layout survives
        assert not {"export_siemens", "study001", "series001", "incomplete_transfer"} & set(r["path"].split("/"))
    assert all(r["path"].startswith("sub-") for r in series)

    assert main(["failures", "--warehouse", str(wh), "--reason", "localizer", "--json"]) == 0
    only = json.loads(capsys.readouterr().out)
    assert only and {r["reason"] for r in only} == {"localizer"}
    assert main(["failures", "--warehouse", str(wh)]) == 0
    text = capsys.readouterr().out
    assert "kind" in text and f"{len(rows)} failure(s)" in text


def test_killed_runs_resume_to_the_same_result_and_one_writer_at_a_time(reference, export, tmp_path):
    wh = tmp_path / "wh"
    # Kill 1: series recorded, nothing preprocessed yet.
    _kill_when(_curate(export, wh), wh, "SELECT count(*) FROM series")
    assert _count(wh, "SELECT count(*) FROM volumes") == 0
    # Kill 2: the T1w is curated, its study's T2w/FLAIR are not (the case that used to change the result).
    _kill_when(_curate(export, wh), wh, T1W_CURATED)
    others = _count(
        wh,
        "SELECT count(*) FROM series s JOIN classification c USING (series_key) "
        "WHERE c.label IN ('T2w', 'FLAIR') AND s.state = 'curated'",
    )
    assert others < 2, "the kill came too late: both T2w and FLAIR were already curated"

    final = _curate(export, wh)
    try:
        deadline = time.monotonic() + 300
        while not _lock_held(wh) and final.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _lock_held(wh), "the resuming curate never took the writer lock"
        waiter = _curate(export, wh)  # waits for the lock, then finds everything done
        busy = subprocess.run(
            [*CLI, "curate", str(export.dicom_dir), "--warehouse", str(wh), "--no-wait"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert busy.returncode == 3, busy.stderr[-2000:]
        assert "is being curated by run" in busy.stderr and "--no-wait" in busy.stderr
        status = subprocess.run(
            [*CLI, "status", "--warehouse", str(wh), "--json"], cwd=ROOT, env=_env(), capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr  # readers never take the lock
        out, err = final.communicate(timeout=600)
        assert final.returncode == 0, err[-3000:]
        w_out, w_err = waiter.communicate(timeout=600)
        assert waiter.returncode == 0, w_err[-3000:]
    finally:
        for p in (final, locals().get("waiter")):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert "waiting for it to finish" in w_err
    resumed, second = json.loads(out[out.index("{") :]), json.loads(w_out[w_out.index("{") :])
    assert resumed["series_processed"] == 3 - 1 - others  # the T1w was curated before kill 2
    assert second["series_processed"] == 0 and second["new_shards"] == 0  # no duplicated work

    assert _result(wh) == _result(reference["warehouse"])
    assert resumed["snapshot_id"] == reference["summary"]["snapshot_id"]
    runs = Manifest(wh).query("SELECT status, count(*) AS n FROM runs GROUP BY status")
    assert {r["status"]: r["n"] for r in runs} == {"interrupted": 2, "completed": 2}
