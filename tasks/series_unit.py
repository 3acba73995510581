"""One series' whole chain (convert -> register -> skull-strip -> QC) as one unit of work.

Why one unit and not four tasks: with a task per stage, every stage is submitted up front and a
worker holding a downstream stage waits on its upstream result (measured: 1.03 of 2 workers busy).
A unit needs nothing but its inputs, so a worker given one never idles.

The unit runs on any Dask worker and never touches the manifest: it returns a `SeriesOutcome` with
the rows to write, and the flow process (the one writer, see `tasks.writer_lock`) records them.
Derivatives are written under the warehouse, so workers on other machines need the warehouse on a
shared filesystem at the same path.

The only dependency between series is explicit: a T2w/FLAIR reuses its study's T1w mask. The flow
runs a study's T2w/FLAIR only after its T1w units of this run are recorded, and then takes the mask
from the warehouse (`reference_masks`), so a run resumed after a kill picks exactly the mask an
uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tasks import preprocess
from tasks.context import WarehouseContext
from tasks.preprocess import QCResult, ReferenceMask, StageError
from tasks.record import WorkItem
from tasks.worker_threads import limit_threads
from warehouse.curation_queries import curated_t1w_masks


@dataclass(frozen=True)
class SeriesOutcome:
    """What one unit did: the rows to record, or the stage that failed and why."""

    item: WorkItem
    state: str  # "curated" | "failed"
    reason: str | None = None
    detail: str = ""
    volume: dict[str, Any] | None = field(default=None, repr=False)
    qc: dict[str, Any] | None = field(default=None, repr=False)
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    worker: str = ""
    started: float = 0.0  # wall clock (time.time) on the worker, for the busy-worker measure
    finished: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def process_series(
    ctx: WarehouseContext, item: WorkItem, backend: str = "auto", reference: ReferenceMask | None = None
) -> SeriesOutcome:
    """Run the chain on this worker; a stage failure is an outcome, not an exception."""
    from tasks.qc_rows import qc_row

    limit_threads()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.time()
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        t = time.perf_counter()
        stages[name] = round(t - clock, 3)
        clock = t

    try:
        conv = preprocess.convert(ctx, item)
        lap("convert")
        reg = preprocess.register(conv)
        lap("register")
        stripped = preprocess.skullstrip(reg, backend, reference)
        lap("skullstrip")
        a = preprocess.assess(stripped)
        lap("qc")
    except StageError as err:
        return SeriesOutcome(
            item,
            "failed",
            err.reason,
            err.detail,
            worker=worker,
            started=started,
            finished=time.time(),
            stage_seconds=stages,
        )
    return SeriesOutcome(
        item,
        "curated",
        volume=preprocess.volume_row(ctx, stripped),
        qc=qc_row(item.volume_id, a.metrics, a.decision, a.reasons),
        decision=a.decision,
        reasons=a.reasons,
        worker=worker,
        started=started,
        finished=time.time(),
        stage_seconds=stages,
    )


def record_outcome(ctx: WarehouseContext, outcome: SeriesOutcome) -> QCResult | None:
    """Write a unit's outcome to the manifest (flow process only); None for a failed series."""
    if outcome.state != "curated" or outcome.volume is None or outcome.qc is None:
        preprocess.record_failure(ctx, outcome.item, outcome.reason or "failed", outcome.detail)
        return None
    return preprocess.record_volume(
        ctx, outcome.item, outcome.volume, outcome.qc, outcome.decision or "fail", outcome.reasons
    )


def _volume_id(series_key: str, sop_hash: str) -> str:
    return "vol-" + hashlib.sha256(f"{series_key}:{sop_hash}".encode()).hexdigest()[:16]


def reference_masks(ctx: WarehouseContext, study_ids: Iterable[str]) -> dict[str, ReferenceMask]:
    """Each study's reference T1w mask, from the warehouse: the curated T1w with the smallest series key.

    Only a T1w whose current volume is recorded counts (a T1w that failed before QC has no mask to
    give, and the T2w is then stripped on its own, in a resumed run as in an uninterrupted one).
    """
    best: dict[str, ReferenceMask] = {}
    for row in curated_t1w_masks(ctx.manifest, sorted(set(study_ids))):
        if row["volume_id"] != _volume_id(row["series_key"], row["sop_hash"]):
            continue  # a volume of an older version of the series
        study = row["study_id"]
        if study not in best or row["series_key"] < best[study].series_key:
            best[study] = ReferenceMask(ctx.abs(row["mask_path"]), row["skullstrip_backend"], row["series_key"])
    return best
