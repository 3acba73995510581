"""Pretraining flow: latest (or given) snapshot -> JEPA-MoE checkpoint recorded in the manifest."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import units
from tasks.summary import markdown_table
from warehouse.manifest import now


@flow(name="pretrain")
def pretrain_flow(
    warehouse: str,
    preset: str = "tiny",
    snapshot_id: str | None = None,
    steps: int | None = None,
    run_id: str | None = None,
) -> dict:
    """Pretrain on a snapshot; resumes a killed run and does not repeat a finished one."""
    log = get_run_logger()
    started = now()
    params = {"preset": preset, "snapshot_id": snapshot_id, "steps": steps}
    ctx = units.open_warehouse_task(warehouse, run_id)
    units.record_run_task(ctx, "pretrain", started, "running", params)
    try:
        out = units.pretrain_task(ctx, preset, snapshot_id, steps)
    except Exception:
        units.record_run_task(ctx, "pretrain", started, "failed", params)
        raise
    summary = {k: (str(v) if k == "checkpoint_path" else v) for k, v in asdict(out).items()}
    units.record_run_task(ctx, "pretrain", started, "completed", params, summary)
    log.info(
        "checkpoint %s after %d steps: loss %.4f -> %.4f",
        out.checkpoint_id,
        out.steps,
        out.first_loss,
        out.final_loss,
    )
    brief = {k: v for k, v in summary.items() if k != "losses"}
    create_markdown_artifact(markdown=markdown_table(brief), key="pretrain-summary")
    return summary
