"""Pretraining flow: latest (or given) snapshot -> JEPA-MoE checkpoint recorded in the manifest."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import units
from tasks.lifecycle import run_lifecycle
from tasks.summary import markdown_table


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
    params = {"preset": preset, "snapshot_id": snapshot_id, "steps": steps}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with run_lifecycle(ctx.manifest, ctx.run_id, "pretrain", params) as run:
        out = units.pretrain_task(ctx, preset, snapshot_id, steps)
        summary = {k: (str(v) if k == "checkpoint_path" else v) for k, v in asdict(out).items()}
        run.summary = summary
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
