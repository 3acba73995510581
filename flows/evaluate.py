"""Evaluation flow: frozen-encoder probes of the latest (or given) checkpoint vs a random encoder."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tasks import units
from tasks.lifecycle import run_lifecycle


@flow(name="evaluate")
def evaluate_flow(warehouse: str, checkpoint_id: str | None = None, run_id: str | None = None) -> dict:
    log = get_run_logger()
    params = {"checkpoint_id": checkpoint_id}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with run_lifecycle(ctx.manifest, ctx.run_id, "evaluate", params) as run:
        out = units.evaluate_task(ctx, checkpoint_id)
        rows = [asdict(s) for s in out.scores]
        for r in rows:
            log.info(
                "%s %-11s AUROC %.3f [%.3f, %.3f] (%d subjects, %d volumes)",
                r["task"],
                r["encoder"],
                r["auroc"],
                r["ci_low"],
                r["ci_high"],
                r["n_subjects"],
                r["n_volumes"],
            )
        summary = {"checkpoint_id": out.checkpoint_id, "scores": rows}
        run.summary = summary
    create_table_artifact(table=rows, key="evaluation", description="probe AUROC, pretrained vs random init")
    report = units.report_task(ctx)
    summary["report"] = report
    return summary
