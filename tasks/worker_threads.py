"""Thread counts of the heavy libraries on a Dask worker: each task gets its worker's share of cores.

A Dask worker caps OpenMP/MKL/OpenBLAS threads, but ITK (ANTs) ignores those caps and starts one
thread per core unless ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS is set before ANTs is first used, and torch
sizes its intra-op pool to the machine. With N single-threaded workers on N cores every task would
then run N threads: N² threads fighting for N cores. `limit_threads` runs first in every per-series
unit (`tasks.series_unit.process_series`) and is cheap after the first call in a process.

The share is `cores on this host // (worker processes on this host × threads per worker)`, at least 1:
on a LocalCluster sized to the machine (workers = cores, one thread each) it is 1; a `dask worker
--nworkers 2 --nthreads 1` on a 16-core machine gives each task 8 threads.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger("mrifoundry.workers")

ENV_OVERRIDE = "MRIFOUNDRY_TASK_THREADS"
"""Set to a number to force the threads per task (e.g. on a worker shared with other jobs)."""


def host_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def core_share(cores: int, workers_on_host: int, threads_per_worker: int) -> int:
    """Threads one task may use: its slot's share of the host's cores, at least one."""
    return max(1, cores // max(1, workers_on_host * max(1, threads_per_worker)))


def _dask_slots() -> tuple[int, int] | None:
    """(worker processes on this host, threads per worker) when running inside a Dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not on a Dask worker (in-process run, tests)
        return None
    host = worker.address.rsplit(":", 1)[0]
    try:
        info = worker.client.scheduler_info(n_workers=-1)["workers"]
        same_host = sum(1 for addr in info if addr.rsplit(":", 1)[0] == host)
    except Exception as err:  # noqa: BLE001 - a slow scheduler must not stop the work; assume alone
        log.debug("could not count workers on %s: %s", host, err)
        same_host = 1
    return max(1, same_host), max(1, worker.state.nthreads)


@functools.lru_cache(maxsize=1)
def limit_threads() -> int:
    """Set ITK's and torch's thread counts to this worker's share of cores; returns the count."""
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"{ENV_OVERRIDE}={override!r} is not a positive integer; unset it or set e.g. 2")
        n = int(override)
    else:
        slots = _dask_slots()
        if slots is None:
            return 0  # in-process: leave the libraries' own defaults alone
        n = core_share(host_cores(), *slots)
    # ITK reads this when ANTs first creates a multithreader; the per-series unit imports ANTs later.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency; a stripped worker image may lack it
        pass
    log.info("heavy libraries limited to %d thread(s) per task on this worker", n)
    return n
