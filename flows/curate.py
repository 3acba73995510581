"""Curation flow: DICOM export -> classified, preprocessed, QC'd volumes -> shards + snapshot."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from tasks import units
from tasks.artifacts import curation_markdown
from tasks.lifecycle import run_lifecycle
from tasks.summary import curation_summary


# Two workers: registration (ITK) and skull-stripping (torch) are multi-threaded already, so more
# parallel series only oversubscribe a small machine; raise it on bigger workers.
@flow(name="curate", task_runner=ThreadPoolTaskRunner(max_workers=2))
def curate_flow(
    source: str,
    warehouse: str,
    skullstrip: str = "auto",
    labels_csv: str | None = None,
    run_id: str | None = None,
    min_new_volumes: int = 1,
) -> dict:
    """Ingest a DICOM folder into a warehouse; a rerun over the same export does no work.

    Args:
        source: folder with the DICOM export (any layout; gzipped files are fine).
        warehouse: warehouse directory (created if missing).
        skullstrip: "auto", "deepbet" or "synthstrip-docker".
        labels_csv: optional registry CSV (PatientID,lesion,enlarged_ventricles) for evaluation labels.
        run_id: id recorded in the manifest's runs table (generated when omitted).
        min_new_volumes: emit the snapshot event (which triggers pretraining) only from this many
            newly sharded volumes on.
    """
    log = get_run_logger()
    params = {"skullstrip": skullstrip, "labels": bool(labels_csv)}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with run_lifecycle(ctx.manifest, ctx.run_id, "curate", params, redact=(source, labels_csv or "")) as run:
        scan = units.scan_task(source)
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

        work = plan.ordered()
        progress = create_progress_artifact(0.0, key="curation-progress", description="series preprocessed")
        t1_masks = {}
        pending = []
        for item in work:
            conv = units.convert_task.submit(ctx, item)
            reg = units.register_task.submit(ctx, conv)
            ref = t1_masks.get(item.study_id) if item.label != "T1w" else None
            stripped = units.skullstrip_task.submit(ctx, reg, skullstrip, ref)
            if item.label == "T1w":
                t1_masks.setdefault(item.study_id, stripped)
            pending.append((item, units.qc_task.submit(ctx, stripped)))
        for i, (item, fut) in enumerate(pending, start=1):
            res = fut.result()
            log.info(
                "[%d/%d] %s %s: %s",
                i,
                len(work),
                item.label,
                item.series_key,
                res.decision + (f" ({', '.join(res.reasons)})" if res.reasons else "") if res else "failed",
            )
            update_progress_artifact(progress, 100.0 * i / len(work))
        if not work:
            update_progress_artifact(progress, 100.0)

        flagged = units.group_outliers_task(ctx)
        if flagged:
            log.info("%d volumes sent to review as outliers within their scanner/sequence group", flagged)
        build = units.shards_task(ctx)
        units.announce_snapshot_task(ctx, build, min_new_volumes)
        summary = curation_summary(ctx, scan_files=scan.n_files, plan=plan, build=build)
        run.summary = summary
        units.publish_summary_task(ctx, "curation-summary", curation_markdown(summary, flagged))
    return summary
