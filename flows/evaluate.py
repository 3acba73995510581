"""Evaluation flow: the checkpoint's encoder beside its baselines on fixed splits, one task run per protocol."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tasks import units
from tasks.evaluation import units as eval_units
from tasks.evaluation.protocols import default_tasks
from tasks.lifecycle import run_lifecycle


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


@flow(name="evaluate")
def evaluate_flow(
    warehouse: str, checkpoint_id: str | None = None, run_id: str | None = None, preset: str = "tiny"
) -> dict:
    """Evaluate a checkpoint (default: the latest) with the evaluation preset `preset` (tiny, cpu, small)."""
    from tasks.eval_report import verdict

    log = get_run_logger()
    params = {"checkpoint_id": checkpoint_id, "preset": preset}
    ctx = units.open_warehouse_task(warehouse, run_id)
    with run_lifecycle(ctx.manifest, ctx.run_id, "evaluate", params) as run:
        state = eval_units.prepare_task(ctx, checkpoint_id, preset)
        results = [eval_units.protocol_task(state, spec) for spec in default_tasks(state.cohort, state.cfg)]
        out = eval_units.finish_task(state, results)
        page = eval_units.eval_report_task(ctx, out, state.checkpoint, preset)
        rows = out.scores
        for r in rows:
            ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["ci_low"] is not None else ""
            log.info(
                "%-22s %-30s %s %s %s", r["task"], r["encoder"], r["metric"], _fmt(r["value"]), ci or r["note"] or ""
            )
        words = verdict(out)
        for line in words:
            log.info(line)
        summary = {
            "checkpoint_id": out.checkpoint_id,
            "snapshot_id": out.snapshot_id,
            "scores": rows,
            "tasks": out.as_json()["tasks"],
            "across_tasks": out.across_tasks(),
            "verdict": words,
            "notes": list(out.notes),
            "evaluation_report": page,
            "seconds": out.seconds,
        }
        run.summary = {k: v for k, v in summary.items() if k != "scores"}
    create_table_artifact(
        table=[{k: v for k, v in r.items() if k != "auroc"} for r in rows],
        key="evaluation",
        description="Per task and method: metric, 95% subject-bootstrap CI, paired differences; notes say why withheld",
    )
    summary["report"] = units.report_task(ctx)
    return summary
