"""Prefect task wrappers of the evaluation steps (same policy as tasks/units.py: no caching, no results stored).

Each protocol is its own task run, so the Prefect UI shows which task took how long or failed.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.context import WarehouseContext
from tasks.evaluation.protocols import TaskSpec
from tasks.evaluation.runner import EvalState, EvaluationOutcome, TaskResult, finish, prepare, run_protocol

_COMMON = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="bench-corpus", **_COMMON)
def bench_corpus_task(ctx: WarehouseContext, subjects: int, seed: int = 0, pool_fraction: float = 0.4):
    from synth.cohort import CohortConfig
    from tasks.bench_corpus import write_bench_corpus

    return write_bench_corpus(ctx, CohortConfig(n_subjects=subjects, seed=seed, pool_fraction=pool_fraction))


@task(name="evaluate-prepare", tags=["torch"], **_COMMON)
def prepare_task(ctx: WarehouseContext, checkpoint_id: str | None, preset: str) -> EvalState:
    return prepare(ctx, checkpoint_id, preset)


@task(name="evaluate-protocol", task_run_name="protocol-{spec.name}", tags=["torch"], **_COMMON)
def protocol_task(state: EvalState, spec: TaskSpec) -> TaskResult | None:
    return run_protocol(state, spec)


@task(name="evaluate-finish", **_COMMON)
def finish_task(state: EvalState, results: list[TaskResult | None]) -> EvaluationOutcome:
    return finish(state, results)


@task(name="evaluation-report", **_COMMON)
def eval_report_task(ctx: WarehouseContext, out: EvaluationOutcome, checkpoint: dict, preset: str) -> str:
    from tasks.eval_report import write_eval_report

    return str(write_eval_report(ctx, out, checkpoint, preset))
