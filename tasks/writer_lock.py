"""One writing curation per warehouse: an advisory `flock` on `<warehouse>/curate.lock`.

Two `curate` commands on one warehouse would both plan and process every new series. The flow takes
this lock before it scans and holds it to the end, so a second curate waits (and then finds the work
done) or, with `--no-wait`, refuses at once. Readers (`status`, the dashboard) never take it.

The kernel drops a `flock` when its process dies, SIGKILL included, so a killed run never leaves a
stale lock. The file's text (PID, host, run id, start time; no PHI) only explains who holds it.
flock works across machines on NFSv4 and most cluster filesystems; on others, run one curate at a time.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = "curate.lock"


class WarehouseBusyError(RuntimeError):
    """Another curation holds the warehouse's writer lock and the caller chose not to wait."""


def holder(root: Path) -> str:
    """Who holds (or last held) the lock, in words; empty when unknown."""
    try:
        return (Path(root) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


@contextmanager
def writer_lock(
    root: Path | str,
    run_id: str,
    *,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    poll_seconds: float = 1.0,
) -> Iterator[Path]:
    """Hold the warehouse's writer lock for the block.

    Args:
        root: the warehouse directory (must exist).
        run_id: recorded in the lock file so a waiting user sees which run holds it.
        wait: block until the lock is free; False raises `WarehouseBusyError` at once.
        on_wait: called once with a message when the lock is taken and we start waiting.
        poll_seconds: how often a waiter retries (a blocking flock could not be interrupted by Ctrl-C
            on every platform, so it polls).
    """
    path = Path(root) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                who = holder(root) or "another process"
                msg = f"warehouse {root} is being curated by {who}"
                if not wait:
                    raise WarehouseBusyError(
                        f"{msg}; run again when it has finished, or drop --no-wait to wait for it"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"{msg}; waiting for it to finish (Ctrl-C to give up)")
                told = True
                time.sleep(poll_seconds)
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"run {run_id} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
