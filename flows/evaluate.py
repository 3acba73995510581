"""Evaluation flow: the checkpoint's encoder beside its baselines on fixed splits, one task run per protocol."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from tasks import units
from tasks.artifacts import evaluation_markdown
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
        try:
            state = eval_units.prepare_task(ctx, checkpoint_id, preset)
        except LookupError as err:  # no labels / no labelled volume: say so, and let a served chain finish
            if str(err).startswith("no checkpoint"):
                raise
            log.warning("nothing evaluated: %s", err)
            notes = [f"nothing evaluated: {err}"]
            run.summary = {"checkpoint_id": checkpoint_id, "tasks": [], "verdict": notes, "notes": notes}
            units.publish_summary_task(
                ctx, "evaluation-summary", evaluation_markdown([], run.summary["notes"], None, str(checkpoint_id))
            )
            return run.summary
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
        parent = units.compare_parent_task(ctx, out.checkpoint_id, preset)  # same cohort and splits
        for line in parent.words:
            log.info(line)
        summary = {
            "checkpoint_id": out.checkpoint_id,
            "snapshot_id": out.snapshot_id,
            "scores": rows,
            "tasks": out.as_json()["tasks"],
            "across_tasks": out.across_tasks(),
            "verdict": words,
            "notes": list(out.notes),
            "parent_comparison": parent.words,
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
    md = evaluation_markdown(rows, out.notes, page, out.checkpoint_id, comparison=parent.words, verdict=words)
    units.publish_summary_task(ctx, "evaluation-summary", f"{md}\n\nRun report: `{summary['report']}`")
    return summary
