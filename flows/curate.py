"""Curation flow: DICOM export -> classified, preprocessed, QC'd volumes -> shards + snapshot.

Scale-out: the per-series units run on Dask through prefect-dask. By default a LocalCluster sized to
the machine (one single-threaded worker per core; `tasks.worker_threads` keeps ITK and torch to that
share); `dask_runner(address=...)` (CLI `--dask-address`) uses an existing cluster instead. The flow
process is the warehouse's only writer: it holds the writer lock (`tasks.writer_lock`), records each
unit's outcome as it arrives and submits a study's T2w/FLAIR once its T1w is recorded.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect_dask import DaskTaskRunner

from tasks import units
from tasks.artifacts import curation_markdown
from tasks.lifecycle import run_lifecycle
from tasks.progress import CurationProgress
from tasks.record import WorkItem, require_input
from tasks.series_unit import SeriesOutcome, record_outcome, reference_masks
from tasks.summary import curation_summary
from tasks.worker_threads import host_cores
from tasks.writer_lock import writer_lock

DASK_ADDRESS_ENV = "MRIFOUNDRY_DASK_ADDRESS"
"""Scheduler address (tcp://HOST:PORT) used when none is passed, e.g. by a deployment's environment."""


def dask_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """The curate flow's task runner: an existing Dask cluster, or a LocalCluster sized to this machine.

    LocalCluster: one worker process per core with one thread each (registration and skull-stripping
    hold the GIL in places, so processes, not threads), no per-worker memory cap (the nanny would
    kill a worker in the middle of a 1 mm registration; the OS still guards the machine) and its
    HTTP endpoint on a free port (two curates on one machine must not fight over 8787).
    """
    address = address or os.environ.get(DASK_ADDRESS_ENV, "").strip() or None
    if address:
        return DaskTaskRunner(address=address)
    n = workers if workers is not None else host_cores()
    if n < 1:
        raise ValueError(f"--workers {n}: a local Dask cluster needs at least one worker")
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "memory_limit": 0,
            "dashboard_address": ":0",
        },
    )


@contextmanager
def _workers_share_this_api() -> Iterator[None]:
    """Point the task runs of Dask workers at this flow's Prefect API.

    Without PREFECT_API_URL the flow talks to an ephemeral server it started itself; a Dask worker
    would start its own (one per worker, never stopped when the cluster goes). The settings of the
    submitting context travel with every task, so pinning the URL here reaches every worker.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running:
        yield
        return
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def _run_units(ctx, work: tuple[WorkItem, ...], backend: str, log) -> tuple[list[SeriesOutcome], dict[str, Any]]:
    """Submit every unit whose inputs exist, record outcomes as they come, release waiting T2w/FLAIR."""
    progress = CurationProgress(total=len(work))
    artifact = create_progress_artifact(0.0, key="curation-progress", description="series preprocessed")
    t1w_left = Counter(w.study_id for w in work if w.label == "T1w")
    waiting: dict[str, list[WorkItem]] = defaultdict(list)
    done: queue.Queue = queue.Queue()
    items: dict[Any, WorkItem] = {}

    def submit(batch: list[WorkItem]) -> None:
        refs = reference_masks(ctx, {w.study_id for w in batch if w.label != "T1w"})
        for w in batch:
            fut = units.series_task.submit(ctx, w, backend, refs.get(w.study_id) if w.label != "T1w" else None)
            items[fut.task_run_id] = w
            fut.add_done_callback(done.put)

    ready = []
    for w in work:
        (waiting[w.study_id] if w.label != "T1w" and t1w_left[w.study_id] else ready).append(w)
    t0 = time.monotonic()
    live = progress.start_bar()
    outcomes: list[SeriesOutcome] = []
    try:
        submit(ready)
        while len(outcomes) < len(work):
            fut = done.get()
            item = items.pop(fut.task_run_id)
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 - a lost worker or a bug: record it, go on with the rest
                outcome = SeriesOutcome(item, "failed", "worker_failed", f"{type(err).__name__}: {err}"[:500])
            res = record_outcome(ctx, outcome)
            outcomes.append(outcome)
            progress.record(res.decision if res else None)
            verdict = (
                (res.decision + (f" ({', '.join(res.reasons)})" if res.reasons else ""))
                if res
                else (f"failed: {outcome.reason}")
            )
            if not live:
                log.info("%s %s: %s [%s]", item.label, item.series_key, verdict, progress.line())
            update_progress_artifact(artifact, 100.0 * progress.fraction)
            if item.label == "T1w":
                t1w_left[item.study_id] -= 1
                if not t1w_left[item.study_id] and waiting.get(item.study_id):
                    submit(waiting.pop(item.study_id))
    finally:
        progress.close()
    if not work:
        update_progress_artifact(artifact, 100.0)
    log.info("preprocessing: %s", progress.line())
    return outcomes, _throughput(outcomes, time.monotonic() - t0)


def _throughput(outcomes: list[SeriesOutcome], wall: float) -> dict[str, Any]:
    """Series per minute over the whole preprocessing phase, and the average number of busy workers
    between the first unit's start and the last one's end (the issue's measure of idle workers)."""
    timed = [o for o in outcomes if o.finished > o.started > 0]
    window = max((o.finished for o in timed), default=0.0) - min((o.started for o in timed), default=0.0)
    return {
        "series": len(outcomes),
        "failed": sum(o.state != "curated" for o in outcomes),
        "seconds": round(wall, 2),
        "series_per_minute": round(60.0 * len(outcomes) / wall, 2) if wall > 0 and outcomes else None,
        "workers_used": len({o.worker for o in timed}),
        "busy_workers": round(sum(o.seconds for o in timed) / window, 2) if window > 0 else None,
    }


@flow(name="curate", task_runner=dask_runner())
def curate_flow(
    source: str,
    warehouse: str,
    skullstrip: str = "auto",
    labels_csv: str | None = None,
    run_id: str | None = None,
    min_new_volumes: int = 1,
    wait_for_lock: bool = True,
) -> dict:
    """Ingest a DICOM folder into a warehouse; a rerun over the same export does no work.

    Args:
        source: folder with the DICOM export (any layout; gzipped files are fine), or a BIDS dataset
            (anat T1w/T2w/FLAIR NIfTI with JSON sidecars; `imaging.bids`).
        warehouse: warehouse directory (created if missing).
        skullstrip: "auto", "deepbet" or "synthstrip-docker".
        labels_csv: optional registry CSV (PatientID,lesion,enlarged_ventricles) for evaluation labels.
        run_id: id recorded in the manifest's runs table (generated when omitted).
        min_new_volumes: emit the snapshot event (which triggers pretraining) only from this many
            newly sharded volumes on.
        wait_for_lock: when another curation writes to this warehouse, wait for it (True) or raise
            `tasks.writer_lock.WarehouseBusyError` at once (False).
    """
    log = get_run_logger()
    # The LocalCluster's scheduler lives in this process; its INFO chatter would drown the progress lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    params = {"skullstrip": skullstrip, "labels": bool(labels_csv)}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with (
        writer_lock(ctx.root, ctx.run_id, wait=wait_for_lock, on_wait=log.warning),
        run_lifecycle(ctx.manifest, ctx.run_id, "curate", params, redact=(source, labels_csv or "")) as run,
    ):
        scan = units.scan_task(source, ctx)
        require_input(Path(source), scan)  # no DICOM series and no BIDS image: say why, exit non-zero
        log.info(
            "scanned %d files in %.1f s: %d series, %d files skipped (unreadable or duplicate)",
            scan.n_files,
            scan.seconds,
            len(scan.series),
            len(scan.rejected_files),
        )
        plan = units.record_task(ctx, source, scan)
        log.info(
            "%d series to preprocess (%d unchanged, %d rejected, %d other, %d held for class review)",
            len(plan.work),
            plan.n_unchanged,
            plan.n_rejected,
            plan.n_other,
            plan.n_review,
        )
        if labels_csv:
            log.info("imported labels for %d subjects", units.labels_task(ctx, labels_csv))

        with _workers_share_this_api():
            _, throughput = _run_units(ctx, plan.ordered(), skullstrip, log)

        flagged = units.group_outliers_task(ctx)
        if flagged:
            log.info("%d volumes sent to review as outliers within their scanner/sequence group", flagged)
        build = units.shards_task(ctx)
        units.announce_snapshot_task(ctx, build, min_new_volumes)
        summary = curation_summary(ctx, scan_files=scan.n_files, plan=plan, build=build)
        summary["preprocessing"] = throughput
        run.summary = summary
        units.publish_summary_task(ctx, "curation-summary", curation_markdown(summary, flagged))
    return summary
