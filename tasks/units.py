"""Prefect task wrappers around the plain functions of this package: orchestration policy in one place.

Policy:
- No result persistence and no input caching: results carry file paths of series and Prefect's
  result store lives outside the warehouse, so nothing about a scan should be written there.
  Idempotency comes from the manifest instead (see tasks.record / tasks.shards).
- Retries only where I/O can flake (reading the source share, writing shards); deterministic
  failures are recorded on the series by the step functions and never retried.
- Heavy steps outside Dask carry tags (`torch`) so a Prefect server can cap them with global
  concurrency limits (`prefect concurrency-limit create torch 1`).
- A series' preprocessing chain is one task (`series_task`), so a Dask worker never holds a task
  that waits on another's result (see tasks.series_unit).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from imaging.deid import Pseudonymizer
from imaging.dicom import ScanResult, scan_source
from tasks import evaluate as evaluate_mod
from tasks import labels as labels_mod
from tasks import preprocess, record, report, series_unit, shards, train
from tasks.context import WarehouseContext, open_warehouse

_COMMON = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="open-warehouse", **_COMMON)
def open_warehouse_task(root: str, run_id: str | None = None) -> WarehouseContext:
    return open_warehouse(root, run_id)


@task(name="scan-dicom", retries=2, retry_delay_seconds=5, **_COMMON)
def scan_task(source: str, ctx: WarehouseContext | None = None) -> ScanResult:
    """With a warehouse, files it has seen unchanged are not reopened (`tasks.scan_index`).

    A BIDS dataset (`imaging.bids`) is read from its sidecars and NIfTI headers instead."""
    from imaging.bids import is_bids_dataset, scan_bids

    if is_bids_dataset(Path(source)):
        return scan_bids(Path(source))
    if ctx is None:
        return scan_source(Path(source))
    from tasks.scan_index import scan_with_index

    return scan_with_index(ctx, Path(source))


@task(name="record-and-classify", **_COMMON)
def record_task(ctx: WarehouseContext, source: str, scan: ScanResult) -> record.ScanPlan:
    p = Pseudonymizer.from_env_or_file(ctx.key_file)
    return record.record_scan(ctx, Path(source), scan, p)


@task(name="synthesize-export", **_COMMON)
def synth_task(out_dir: str, preset: str = "demo", seed: int = 0, subjects: int | None = None) -> dict[str, str]:
    from tasks.synthetic import make_export

    s = make_export(Path(out_dir), preset, seed, subjects)
    return {
        "dicom_dir": str(s.dicom_dir),
        "labels_csv": str(s.labels_csv),
        "n_series": str(s.n_series),
        "n_files": str(s.n_files),
    }


@task(name="import-labels", **_COMMON)
def labels_task(ctx: WarehouseContext, csv_path: str) -> int:
    p = Pseudonymizer.from_env_or_file(ctx.key_file)
    return labels_mod.import_labels(ctx, Path(csv_path), p)


# No tags: a tagged task pays ~1 s of concurrency-slot handling; Dask workers already bound parallelism.
@task(name="curate-series", task_run_name="curate-{item.label}-{item.series_key}", **_COMMON)
def series_task(
    ctx: WarehouseContext,
    item: record.WorkItem,
    backend: str = "auto",
    reference: preprocess.ReferenceMask | None = None,
) -> series_unit.SeriesOutcome:
    """The series' whole chain on one worker (tasks.series_unit); the flow records the outcome."""
    return series_unit.process_series(ctx, item, backend, reference)


@task(name="qc-group-outliers", **_COMMON)
def group_outliers_task(ctx: WarehouseContext) -> int:
    """Robust z-scores within (scanner model, sequence class): pass -> review for outliers."""
    from imaging.qc import QCThresholds
    from tasks.qc_groups import apply_group_outliers

    return apply_group_outliers(ctx.manifest, QCThresholds())


@task(name="build-shards", retries=1, retry_delay_seconds=2, **_COMMON)
def shards_task(ctx: WarehouseContext) -> shards.ShardBuild:
    return shards.build_shards(ctx)


@task(name="pretrain", tags=["torch"], **_COMMON)
def pretrain_task(
    ctx: WarehouseContext, preset: str, snapshot_id: str | None, steps: int | None, **options: object
) -> train.PretrainOutcome:
    """`options`: epochs, phase, init_from, launch, num_workers (see tasks.train.pretrain)."""
    return train.pretrain(ctx, preset=preset, snapshot_id=snapshot_id, steps=steps, **options)


@task(name="evaluate", tags=["torch"], **_COMMON)
def evaluate_task(ctx: WarehouseContext, checkpoint_id: str | None) -> evaluate_mod.EvaluationOutcome:
    return evaluate_mod.evaluate(ctx, checkpoint_id=checkpoint_id)


@task(name="run-report", **_COMMON)
def report_task(ctx: WarehouseContext) -> str:
    return str(report.write_report(ctx))


SNAPSHOT_EVENT = "mrifoundry.snapshot.committed"
"""Curation froze a snapshot with enough new volumes; triggers this warehouse's `pretrain` deployment."""
PRETRAIN_EVENT = "mrifoundry.pretrain.completed"
"""Pretraining recorded a checkpoint; triggers this warehouse's `evaluate` deployment (not any pretrain run's)."""


def _emit(ctx: WarehouseContext, event: str, payload: dict) -> str:
    """Emit `event` about this warehouse: the resource id names the warehouse id, never a path.

    Triggers match that resource id exactly (flows/deployments.py), so an event of another warehouse,
    or a pretrain run started by hand elsewhere, never starts this warehouse's deployments.
    """
    from prefect.events import emit_event

    from warehouse.identity import ensure_warehouse_id, resource_id

    wid = ensure_warehouse_id(ctx.manifest)
    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id(wid), "prefect.resource.name": f"warehouse-{wid}"},
        payload={**payload, "warehouse_id": wid},
    )
    return wid


@task(name="announce-snapshot", **_COMMON)
def announce_snapshot_task(ctx: WarehouseContext, build: shards.ShardBuild, min_new_volumes: int = 1) -> bool:
    """Emit the custom event that triggers the `pretrain` deployment when enough new data arrived."""
    if build.snapshot_id is None or not build.snapshot_created or build.new_volumes < min_new_volumes:
        return False
    _emit(ctx, SNAPSHOT_EVENT, {"snapshot_id": build.snapshot_id, "new_volumes": build.new_volumes})
    return True


@task(name="announce-checkpoint", **_COMMON)
def announce_checkpoint_task(ctx: WarehouseContext, checkpoint_id: str, snapshot_id: str, preset: str) -> None:
    """Emit the event that triggers this warehouse's `evaluate` deployment on the new checkpoint."""
    _emit(ctx, PRETRAIN_EVENT, {"checkpoint_id": checkpoint_id, "snapshot_id": snapshot_id, "preset": preset})


@task(name="compare-with-parent", tags=["torch"], **_COMMON)
def compare_parent_task(ctx: WarehouseContext, checkpoint_id: str, preset: str = "tiny"):
    """The new checkpoint beside the one it continued from, same cohort and splits (tasks.parent_compare)."""
    from tasks.parent_compare import compare_with_parent

    return compare_with_parent(ctx, checkpoint_id, preset)


@task(name="publish-summary", **_COMMON)
def publish_summary_task(ctx: WarehouseContext, kind: str, markdown: str, description: str = "") -> str:
    """A markdown artifact under `<kind>-<warehouse id>`: one stable key per warehouse and flow, so the
    Prefect UI lists every run's summary as the history of that key."""
    from prefect.artifacts import create_markdown_artifact

    from warehouse.identity import ensure_warehouse_id

    key = f"{kind}-{ensure_warehouse_id(ctx.manifest)}"
    create_markdown_artifact(markdown=markdown, key=key, description=description or f"{kind} of this warehouse")
    return key
