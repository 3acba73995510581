"""The pieces of scaled-out curation that need no flow: writer lock (two real processes), progress, thread share."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.progress import CurationProgress
from tasks.worker_threads import core_share
from tasks.writer_lock import WarehouseBusyError, holder, writer_lock

ROOT = Path(__file__).resolve().parents[2]

HOLD = textwrap.dedent(
    """
    import sys, time
    from tasks.writer_lock import writer_lock
    with writer_lock(sys.argv[1], "run-holder"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_or_waits_and_a_dead_holder_frees_the_lock(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 60)
    try:
        assert "run-holder" in holder(tmp_path) and f"pid {proc.pid}" in holder(tmp_path)
        with (
            pytest.raises(WarehouseBusyError, match="run-holder.*drop --no-wait"),
            writer_lock(tmp_path, "run-second", wait=False),
        ):
            pass
        messages: list[str] = []
        t0 = time.monotonic()
        proc.kill()  # SIGKILL: the kernel drops the flock, no stale lock survives the holder
        with writer_lock(tmp_path, "run-second", on_wait=messages.append, poll_seconds=0.05):
            assert "run-second" in holder(tmp_path)
        assert time.monotonic() - t0 < 30
    finally:
        proc.kill()
        proc.wait()


def test_waiter_says_why_it_waits_and_proceeds_when_the_holder_ends(tmp_path: Path) -> None:
    proc = _holder(tmp_path, 5)
    messages: list[str] = []
    try:
        with writer_lock(tmp_path, "run-second", on_wait=messages.append, poll_seconds=0.05):
            assert proc.stdout.readline().strip() == "released"  # only got in once the holder let go
    finally:
        proc.kill()
        proc.wait()
    assert len(messages) == 1 and "run-holder" in messages[0] and "waiting" in messages[0]


def test_progress_counts_rate_eta_and_failures(monkeypatch) -> None:
    clock = iter([110.0, 130.0, 130.0, 130.0, 130.0, 130.0])
    monkeypatch.setattr("tasks.progress.time.monotonic", lambda: next(clock))
    p = CurationProgress(total=5)
    p.record("pass")  # t=110: first finished unit starts the rate clock
    assert p.per_minute is None and p.eta_seconds is None
    p.record(None)  # t=130: one more in 20 s -> 3 per minute
    assert p.per_minute == pytest.approx(3.0)
    assert p.eta_seconds == pytest.approx(60.0)  # 3 left at 3/min
    assert p.line() == "2/5 series, 3.0 vol/min, ETA 1m00s, 1 failed"
    assert p.failed == 1 and p.decisions == {"pass": 1}


def test_no_live_bar_outside_a_terminal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MRIFOUNDRY_PROGRESS", raising=False)
    with open(tmp_path / "log", "w") as f:
        assert CurationProgress(total=3).start_bar(f) is False
    monkeypatch.setenv("MRIFOUNDRY_PROGRESS", "1")
    with open(tmp_path / "log", "w") as f:
        p = CurationProgress(total=3)
        assert p.start_bar(f) is True
        p.record("pass")
        p.close()
    assert "1/3" in (tmp_path / "log").read_text()


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "share"), [(2, 2, 1, 1), (16, 2, 1, 8), (16, 4, 2, 2), (4, 8, 1, 1)]
)
def test_each_task_gets_its_workers_share_of_cores(cores, workers, threads, share) -> None:
    assert core_share(cores, workers, threads) == share


def test_local_cluster_is_sized_to_the_machine_and_an_address_is_used_as_is() -> None:
    from flows.curate import dask_runner
    from tasks.worker_threads import host_cores

    local = dask_runner()
    assert local.cluster_kwargs["n_workers"] == host_cores() and local.cluster_kwargs["threads_per_worker"] == 1
    assert dask_runner(workers=3).cluster_kwargs["n_workers"] == 3
    remote = dask_runner("tcp://10.0.0.5:8786")
    assert remote.address == "tcp://10.0.0.5:8786" and not remote.cluster_kwargs
    with pytest.raises(ValueError, match="at least one worker"):
        dask_runner(workers=0)


def test_a_cluster_on_another_host_needs_a_prefect_server_every_worker_reaches() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.commands.curate import _reachable_api

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not _reachable_api("tcp://10.9.9.9:8786")
        assert _reachable_api("tcp://127.0.0.1:8786") and _reachable_api("localhost:8786")
    with temporary_settings({PREFECT_API_URL: "http://head:4200/api"}):
        assert _reachable_api("tcp://10.9.9.9:8786")
